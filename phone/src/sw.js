// The offline cache: one cache per build, named by the model's hash, so a new model replaces the old.
// __CACHE_VERSION__ and __PRECACHE__ are filled in by build.mjs.

const CACHE_PREFIX = "cxr-phone-";
const CACHE_NAME = CACHE_PREFIX + __CACHE_VERSION__;
const PRECACHE = __PRECACHE__;  // the page, its script and style, bundle.json, the default model, the guard

self.addEventListener("install", event => {
  event.waitUntil(caches.open(CACHE_NAME).then(cache => cache.addAll(PRECACHE)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", event => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name.startsWith(CACHE_PREFIX) && name !== CACHE_NAME) await caches.delete(name);
    }
    await self.clients.claim();
  })());
});

// Cache first for this origin's files; what is not cached yet (the wasm build the browser picked,
// another model variant) is cached as it is downloaded. Pages fall back to the cached index.html.
self.addEventListener("fetch", event => {
  const request = event.request;
  if (request.method !== "GET" || new URL(request.url).origin !== self.location.origin) return;
  event.respondWith((async () => {
    const cache = await caches.open(CACHE_NAME);
    const cached = await cache.match(request, {ignoreSearch: request.mode === "navigate"});
    if (cached) return cached;
    try {
      const response = await fetch(request);
      if (response.ok && response.type === "basic") await cache.put(request, response.clone());
      return response;
    } catch (error) {
      if (request.mode === "navigate") {
        const page = await cache.match("index.html");
        if (page) return page;
      }
      throw error;
    }
  })());
});
