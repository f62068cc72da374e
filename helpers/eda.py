"""Statistics and figures for the exploratory data analysis notebook (01)."""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator
from PIL import Image

from helpers import config
from helpers.data import CLASS_NAMES, Examples, find_duplicate_groups, load_image

# Images per (split, class) in the published copies of ChestXRay2017 (Kermany et al. 2018, Mendeley v2).
# The keras.io TFRecord pair (the project's default download) folds the 16 official "val"
# films (8 per class) into train; the Kaggle / Mendeley folders keep them apart.
PUBLISHED_COPIES = {
    "official train and test splits (as in the Kaggle / Mendeley folders)":
        {("train", "NORMAL"): 1341, ("train", "PNEUMONIA"): 3875, ("test", "NORMAL"): 234, ("test", "PNEUMONIA"): 390},
    "keras.io public TFRecord pair (train also holds the 16 official val films)":
        {("train", "NORMAL"): 1349, ("train", "PNEUMONIA"): 3883, ("test", "NORMAL"): 234, ("test", "PNEUMONIA"): 390},
}


def published_copy(counts) -> str | None:
    """Which published copy of the dataset :func:`class_table` ``counts`` are: its name, or None for none."""
    images = {key: int(value) for key, value in counts["images"].items()}
    return next((name for name, published in PUBLISHED_COPIES.items() if images == published), None)


def class_table(splits: dict[str, Examples]):
    """Images and patients per split and class, with the class share.

    Returns a DataFrame indexed by (split, class) with columns images, patients,
    images_per_patient, share.
    """
    rows = []
    for split, examples in splits.items():
        patients = examples.patient_ids
        for label, name in enumerate(CLASS_NAMES):
            members = examples.labels == label
            n_images = int(members.sum())
            n_patients = len(set(patients[members]))
            rows.append({
                "split": split,
                "class": name,
                "images": n_images,
                "patients": n_patients,
                "images_per_patient": round(n_images / max(n_patients, 1), 2),
                "share": round(n_images / max(len(examples), 1), 3),
            })
    return pd.DataFrame(rows).set_index(["split", "class"])


def images_per_patient(examples: Examples):
    """One row per patient: patient, class, images."""
    frame = pd.DataFrame({"patient": examples.patient_ids, "class": examples.class_names})
    return frame.groupby(["patient", "class"]).size().rename("images").reset_index()


def shared_patient_ids(first: Examples, second: Examples) -> list[str]:
    """Patient ids present in both sets of examples (sorted)."""
    return sorted(str(p) for p in set(first.patient_ids) & set(second.patient_ids))


def duplicate_table(splits: dict[str, Examples]):
    """Byte-identical images within each split: split, group, path, patient."""
    rows = []
    for split, examples in splits.items():
        patients = examples.patient_ids
        for group_number, group in enumerate(find_duplicate_groups(examples)):
            for index in group:
                rows.append({"split": split, "group": group_number,
                             "path": examples.paths[index], "patient": patients[index]})
    return pd.DataFrame(rows, columns=["split", "group", "path", "patient"])


def duplicates_across(first: Examples, second: Examples) -> int:
    """How many images of ``second`` are byte-identical to an image of ``first``."""
    return int(np.isin(second.content_hashes(), first.content_hashes()).sum())


def stored_image_sizes(examples: Examples):
    """Width, height and colour mode of each stored file, read from its header."""
    rows = []
    for path, blob in zip(examples.paths, examples.image_bytes):
        with Image.open(io.BytesIO(blob)) as image:
            rows.append({"path": path, "width": image.width, "height": image.height,
                         "mode": image.mode, "format": image.format})
    return pd.DataFrame(rows)


def intensity_histograms(images: np.ndarray, labels: np.ndarray, bins: int = 64):
    """Mean normalised grey-level histogram per class.

    Args:
        images: (N, H, W, 3) uint8 decoded images.
        labels: (N,) 0/1.
    Returns a DataFrame with columns intensity (bin centre), class, density.
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels.")
    edges = np.linspace(0, 256, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    frames = []
    for label, name in enumerate(CLASS_NAMES):
        members = images[labels == label]
        if len(members) == 0:
            continue
        grey = members.mean(axis=-1)  # (n, H, W)
        histograms = np.stack([np.histogram(g, bins=edges, density=True)[0] for g in grey])
        frames.append(pd.DataFrame({"intensity": centres, "class": name,
                                    "density": histograms.mean(axis=0)}))
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------- #
# Figures
# --------------------------------------------------------------------------- #
def plot_class_counts(table):
    """Bar chart of images per class and split from :func:`class_table`."""
    figure, axis = plt.subplots(figsize=(6, 3.5))
    frame = table.reset_index()
    sns.barplot(data=frame, x="split", y="images", hue="class", ax=axis,
                palette={"NORMAL": "tab:blue", "PNEUMONIA": "tab:red"})
    for container in axis.containers:
        axis.bar_label(container, fmt="%d", fontsize=8)
    axis.set_title("Images per class")
    return figure


def plot_images_per_patient(per_patient):
    """Histogram of images per patient, one panel per class."""
    figure, axis = plt.subplots(figsize=(6, 3.5))
    sns.histplot(data=per_patient, x="images", hue="class", multiple="dodge", shrink=0.8,
                 discrete=True, ax=axis, palette={"NORMAL": "tab:blue", "PNEUMONIA": "tab:red"})
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_yscale("log")
    axis.set_title("Images per patient (train)")
    return figure


def plot_intensity_histograms(histograms):
    figure, axis = plt.subplots(figsize=(6, 3.5))
    sns.lineplot(data=histograms, x="intensity", y="density", hue="class", ax=axis,
                 palette={"NORMAL": "tab:blue", "PNEUMONIA": "tab:red"})
    axis.set_xlabel("grey level (0-255)")
    axis.set_title("Mean pixel-intensity histogram per class")
    return figure


def plot_sample_grid(examples: Examples, per_class: int = 4, seed: int = config.DEFAULT_SEED):
    """A labelled grid: one row per class, ``per_class`` random images each."""
    rng = np.random.default_rng(seed)
    figure, axes = plt.subplots(len(CLASS_NAMES), per_class, figsize=(2.2 * per_class, 4.8))
    axes = np.atleast_2d(axes)
    for label, name in enumerate(CLASS_NAMES):
        members = np.flatnonzero(examples.labels == label)
        chosen = rng.choice(members, size=min(per_class, len(members)), replace=False)
        for column, index in enumerate(chosen):
            axis = axes[label, column]
            axis.imshow(load_image(bytes(examples.image_bytes[index])).astype(np.uint8))
            axis.set_title(f"{name}\n{examples.file_names[index]}", fontsize=7)
            axis.axis("off")
    figure.tight_layout()
    return figure
