// Numbers in messages, printed as Python prints them (helpers/errors.py and f-strings).

// Python's format(x, "g") for the plain numbers used here (99.5 -> "99.5", 50 -> "50").
export function formatG(value) {
  return String(Number(value.toPrecision(6)));
}

// helpers/errors.py distinct_pair: value and limit with the fewest decimals (at least `decimals`)
// that tell them apart, so a message never reads "60.6 > 60.6".
export function distinctPair(value, limit, decimals = 0) {
  for (let places = decimals; places < 18; places++) {
    const shown = [value.toFixed(places), limit.toFixed(places)];
    if (shown[0] !== shown[1]) return shown;
  }
  return value === limit ? [value.toFixed(decimals), limit.toFixed(decimals)] : [String(value), String(limit)];
}
