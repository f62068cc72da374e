"""Data layer: patient ids, the three layouts, decoding, the patient split, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import data
from helpers.errors import UnusableInput
from tests.conftest import encode_image, synthetic_image, tiny_examples, write_tfrecord_pair


# --------------------------------------------------------------------------- #
# Names and labels
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "file_name, expected",
    [
        ("person1234_bacteria_5678.jpeg", "person1234"),
        ("person1234_virus_5678.jpeg", "person1234"),
        ("person1_virus_6_1.jpeg", "person1"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0115-0001-0002.jpeg", "IM-0115"),
        ("NORMAL2-IM-0173-0001.jpeg", "NORMAL2-IM-0173"),
        ("NORMAL2-IM-0173-0001-0002.jpeg", "NORMAL2-IM-0173"),
        ("chest_xray/train/NORMAL/IM-0115-0001.jpeg", "IM-0115"),
    ],
)
def test_patient_id_parses_every_naming_scheme(file_name, expected):
    assert data.patient_id(file_name) == expected


def test_patient_id_rejects_unknown_names_with_advice():
    with pytest.raises(data.DataError, match="Cannot read a patient id.*rename the file"):
        data.patient_id("holiday_photo.jpeg")


def test_label_from_path():
    assert data.label_from_path("chest_xray/train/PNEUMONIA/person1_virus_1.jpeg") == 1
    assert data.label_from_path("chest_xray/test/NORMAL/IM-0001-0001.jpeg") == 0
    with pytest.raises(data.DataError, match="names no class"):
        data.label_from_path("chest_xray/train/COVID/x.jpeg")


# --------------------------------------------------------------------------- #
# The three layouts give the same Examples
# --------------------------------------------------------------------------- #
def test_folder_layout_reads_labels_and_sorted_paths(synthetic_folder):
    examples = data.load_examples("train", synthetic_folder)
    assert len(examples) == 14
    assert data.class_counts(examples) == {"NORMAL": 6, "PNEUMONIA": 8}
    assert list(examples.paths) == sorted(examples.paths)
    assert examples.paths[0].startswith("chest_xray/train/")


def test_tfrecord_pair_matches_folder_layout(synthetic_folder, tmp_path):
    folder = data.load_examples("train", synthetic_folder, source="folder")
    shuffled = np.random.default_rng(0).permutation(len(folder))
    write_tfrecord_pair(tmp_path / "pair" / "ChestXRay2017" / "train", folder, order=shuffled)
    pair = data.load_examples("train", tmp_path / "pair")
    assert list(pair.paths) == list(folder.paths)  # sorted, whatever the record order
    assert list(pair.labels) == list(folder.labels)
    assert all(a == b for a, b in zip(pair.image_bytes, folder.image_bytes))


def test_shards_round_trip_with_patient_ids(synthetic_folder, tmp_path):
    import tensorflow as tf

    folder = data.load_examples("train", synthetic_folder)
    written = data.write_shards(folder, tmp_path / "shards" / "train", num_shards=3)
    assert [p.name for p in written] == [f"shard-0000{i}-of-00003.tfrecord" for i in range(3)]
    shards = data.load_examples("train", tmp_path)  # auto finds shards/<split>
    assert list(shards.paths) == list(folder.paths)
    assert all(a == b for a, b in zip(shards.image_bytes, folder.image_bytes))
    # The shards carry the patient id and file name too.
    record = next(iter(tf.data.TFRecordDataset(str(written[0]))))
    parsed = tf.io.parse_single_example(record, {
        "patient_id": tf.io.FixedLenFeature([], tf.string),
        "file_name": tf.io.FixedLenFeature([], tf.string)})
    name = parsed["file_name"].numpy().decode()
    assert parsed["patient_id"].numpy().decode() == data.patient_id(name)


def test_make_dataset_yields_float_pixels_and_labels(synthetic_folder):
    examples = data.load_examples("train", synthetic_folder)
    images, labels = next(iter(data.make_dataset(examples, batch_size=5)))
    assert images.shape == (5, 224, 224, 3)
    assert images.dtype.name == "float32"
    assert float(np.min(images)) >= 0.0 and float(np.max(images)) <= 255.0
    assert list(labels.numpy()) == list(examples.labels[:5].astype(np.float32))


def test_head_keeps_both_classes_and_is_seeded(synthetic_folder):
    examples = data.load_examples("train", synthetic_folder)
    small = examples.head(4, seed=1)
    assert len(small) == 4 and set(small.labels) == {0, 1}
    assert list(small.paths) == list(examples.head(4, seed=1).paths)


# --------------------------------------------------------------------------- #
# The one image-loading function
# --------------------------------------------------------------------------- #
def test_load_image_converts_grayscale_and_rgba_png_to_rgb_224(tmp_path):
    gray = np.full((50, 80), 200, dtype=np.uint8)
    rgba = np.zeros((300, 120, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 255
    (tmp_path / "gray.png").write_bytes(encode_image(gray, "PNG"))
    image = data.load_image(tmp_path / "gray.png")
    assert image.shape == (224, 224, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image, 200.0, atol=0.5)  # grayscale -> equal R, G, B
    red = data.load_image(encode_image(rgba, "PNG"))
    np.testing.assert_allclose(red[..., 0], 255.0, atol=0.5)
    np.testing.assert_allclose(red[..., 1:], 0.0, atol=0.5)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "is empty"),
        (b"this is not an image", "could not be decoded"),
        (encode_image(synthetic_image(1, 64))[:300], "could not be decoded"),  # truncated JPEG
    ],
)
def test_load_image_bad_bytes_give_clear_errors(payload, message):
    with pytest.raises(data.DataError, match=message):
        data.load_image(payload)


def test_load_image_reads_a_dicom_film_like_its_png(tmp_path):
    from helpers import dicom

    film = synthetic_image(5, size=96)
    path = tmp_path / "film.dcm"
    path.write_bytes(dicom.film_bytes(film, window=(127.5, 256)))
    np.testing.assert_allclose(data.load_image(path), data.load_image(encode_image(film, "PNG")), atol=1.5)  # rounding
    path.write_bytes(dicom.film_bytes(film, modality="CT"))
    with pytest.raises(data.DataError, match=r"film.dcm is a CT scan"):
        data.load_image(path)


def test_load_image_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="No image file"):
        data.load_image(tmp_path / "nope.jpeg")


def test_decode_images_names_every_corrupt_file():
    examples = tiny_examples(4)
    examples.image_bytes[1] = b"garbage"
    examples.image_bytes[2] = b"\xff\xd8\xff"
    with pytest.raises(data.DataError, match=r"2 of 4 images could not be decoded.*IM-0001-0001.*IM-0002-0001"):
        data.decode_images(examples, progress=False)


def test_folder_dataset_names_every_bad_file_up_front(synthetic_folder):
    folder = synthetic_folder / "chest_xray/train"
    (folder / "NORMAL/IM-0001-0002.jpeg").write_bytes(b"garbage")
    (folder / "PNEUMONIA/person2_virus_3.jpeg").write_bytes(encode_image(synthetic_image(3), "PNG")[:60])
    (folder / "PNEUMONIA/person3_virus_4.png").write_bytes(encode_image(synthetic_image(4, size=32), "PNG"))
    with pytest.raises(data.DataError, match=r"3 file\(s\) in .*train cannot be used") as caught:
        data.load_examples("train", synthetic_folder)
    lines = str(caught.value).splitlines()[1:]
    assert [line.strip().split(" ")[0].rsplit("/", 1)[-1] for line in lines] == [
        "IM-0001-0002.jpeg", "person2_virus_3.jpeg", "person3_virus_4.png"]
    assert "not an image file" in lines[0] and "truncated" in lines[1] and "32x32" in lines[2]
    assert isinstance(caught.value, UnusableInput)


def test_folder_dataset_reads_dicom_and_16_bit_films_as_an_upload_would(synthetic_folder):
    from helpers import dicom, uploads

    folder = synthetic_folder / "chest_xray/train/NORMAL"
    film = synthetic_image(9, size=96)
    (folder / "IM-0009-0001.dcm").write_bytes(dicom.film_bytes(film, photometric="MONOCHROME1"))
    (folder / "IM-0010-0001.png").write_bytes(encode_image((film.astype(np.uint16) * 64 + 100), "PNG"))
    examples = data.load_examples("train", synthetic_folder)
    by_name = {path.rsplit("/", 1)[-1]: content for path, content in zip(examples.paths, examples.image_bytes)}
    for name in ("IM-0009-0001.dcm", "IM-0010-0001.png"):
        stored = data.load_image(by_name[name])  # TensorFlow's decoder, as training reads it
        uploaded, _ = uploads.decode_upload((folder / name).read_bytes(), name)  # the app's path
        assert np.abs(stored - uploaded).max() <= 2.0, name
    assert data.label_from_path(examples.paths[list(by_name).index("IM-0009-0001.dcm")]) == 0


def test_decode_images_cached_reuses_the_cache(synthetic_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    examples = data.load_examples("train", synthetic_folder)
    first = data.decode_images_cached(examples)
    cached = list((tmp_path / "artifacts" / "cache").glob("images-14-*.npy"))
    assert first.shape == (14, 224, 224, 3) and first.dtype == np.uint8 and len(cached) == 1
    np.testing.assert_array_equal(data.decode_images_cached(examples), first)


# --------------------------------------------------------------------------- #
# Bad data layouts
# --------------------------------------------------------------------------- #
def test_missing_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_DATA_DIR", str(tmp_path / "does-not-exist"))
    with pytest.raises(data.DataError, match="CXR_DATA_DIR points at .* not a folder"):
        data.load_examples("train")


def test_folder_without_class_subfolders(tmp_path):
    (tmp_path / "chest_xray" / "train" / "cats").mkdir(parents=True)
    with pytest.raises(data.DataError, match=r"no class sub-folder.*found \['cats'\]"):
        data.load_examples("train", tmp_path)


def test_data_dir_with_no_known_layout(tmp_path):
    with pytest.raises(data.DataError, match="holds no 'test' split in a known layout"):
        data.load_examples("test", tmp_path)


def test_empty_tfrecord(tmp_path):
    split = tmp_path / "ChestXRay2017" / "train"
    split.mkdir(parents=True)
    (split / "images.tfrec").write_bytes(b"")
    (split / "paths.tfrec").write_bytes(b"")
    with pytest.raises(data.DataError, match="is empty"):
        data.load_examples("train", tmp_path)


def test_truncated_tfrecord(synthetic_folder, tmp_path):
    examples = data.load_examples("train", synthetic_folder)
    split = tmp_path / "ChestXRay2017" / "train"
    write_tfrecord_pair(split, examples)
    raw = (split / "images.tfrec").read_bytes()
    (split / "images.tfrec").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(data.DataError, match="truncated or corrupt.*download or convert it again"):
        data.load_examples("train", tmp_path)


def test_path_record_that_names_no_class(synthetic_folder, tmp_path):
    examples = data.load_examples("train", synthetic_folder)
    broken = data.Examples.__new__(data.Examples)
    object.__setattr__(broken, "paths", np.array([p.replace("/NORMAL/", "/") for p in examples.paths]))
    object.__setattr__(broken, "labels", examples.labels)
    object.__setattr__(broken, "image_bytes", examples.image_bytes)
    write_tfrecord_pair(tmp_path / "ChestXRay2017" / "train", broken)
    with pytest.raises(data.DataError, match="names no class"):
        data.load_examples("train", tmp_path)


def test_mismatched_tfrecord_pair(synthetic_folder, tmp_path):
    examples = data.load_examples("train", synthetic_folder)
    write_tfrecord_pair(tmp_path / "ChestXRay2017" / "train", examples)
    write_tfrecord_pair(tmp_path / "short" / "train", examples.subset([0, 1]))
    (tmp_path / "ChestXRay2017" / "train" / "paths.tfrec").write_bytes(
        (tmp_path / "short" / "train" / "paths.tfrec").read_bytes())
    with pytest.raises(data.DataError, match="14 records but paths.tfrec holds 2"):
        data.load_examples("train", tmp_path)


# --------------------------------------------------------------------------- #
# Duplicates and the patient split
# --------------------------------------------------------------------------- #
def test_duplicates_under_two_patients_are_kept_together(synthetic_folder):
    # Make person3's image a byte copy of person4's: their groups must merge.
    pneumonia = synthetic_folder / "chest_xray" / "train" / "PNEUMONIA"
    (pneumonia / "person3_bacteria_4.jpeg").write_bytes((pneumonia / "person4_virus_5.jpeg").read_bytes())
    examples = data.load_examples("train", synthetic_folder)
    groups = data.find_duplicate_groups(examples)
    assert len(groups) == 1 and len(groups[0]) == 2
    group_ids = data.split_groups(examples)
    names = list(examples.file_names)
    assert group_ids[names.index("person3_bacteria_4.jpeg")] == group_ids[names.index("person4_virus_5.jpeg")]
    assert group_ids[names.index("person1_bacteria_1.jpeg")] == group_ids[names.index("person1_bacteria_2.jpeg")]
    assert len(np.unique(group_ids)) == 11  # 13 patients, person3+person4 merged, person1 twice


def test_split_by_patient_rejects_bad_fraction(synthetic_folder):
    examples = data.load_examples("train", synthetic_folder)
    with pytest.raises(ValueError, match="validation_fraction"):
        data.split_by_patient(examples, validation_fraction=0.7)


def _synthetic_examples(num_patients: int, seed: int = 0) -> data.Examples:
    rng = np.random.default_rng(seed)
    paths, blobs = [], []
    for patient in range(num_patients):
        pneumonia = patient % 4 != 0  # 3:1 like the real data
        for image in range(int(rng.integers(1, 4))):
            name = (f"person{patient}_bacteria_{patient * 10 + image}.jpeg" if pneumonia
                    else f"IM-{patient:04d}-{image + 1:04d}.jpeg")
            paths.append(f"chest_xray/train/{'PNEUMONIA' if pneumonia else 'NORMAL'}/{name}")
            blobs.append(f"{patient}-{image}".encode())
    blobs[5] = blobs[40]  # a byte-identical image under two patients
    return data._make_examples(paths, blobs)


def test_split_by_patient_has_no_leak_and_is_stratified_and_seeded():
    examples = _synthetic_examples(200)
    train, validation = data.split_by_patient(examples, 0.2, seed=7)
    assert len(train) + len(validation) == len(examples)
    assert not set(train.patient_ids) & set(validation.patient_ids)
    assert not set(train.content_hashes()) & set(validation.content_hashes())
    assert 0.15 < len(validation) / len(examples) < 0.25
    assert abs(validation.labels.mean() - examples.labels.mean()) < 0.05
    again, _ = data.split_by_patient(examples, 0.2, seed=7)
    assert list(again.paths) == list(train.paths)
    other, _ = data.split_by_patient(examples, 0.2, seed=8)
    assert list(other.paths) != list(train.paths)


# --------------------------------------------------------------------------- #
# Integration: the real data through CXR_DATA_DIR
# --------------------------------------------------------------------------- #
@pytest.mark.integration
@pytest.mark.parametrize("source", ["tfrecord", "folder"])
def test_real_data_counts(real_data_dir, source):
    train = data.load_examples("train", real_data_dir, source=source)
    test = data.load_examples("test", real_data_dir, source=source)
    assert data.class_counts(train) == {"NORMAL": 1341, "PNEUMONIA": 3875}
    assert data.class_counts(test) == {"NORMAL": 234, "PNEUMONIA": 390}


@pytest.mark.integration
def test_real_layouts_hold_the_same_bytes_and_decode(real_data_dir):
    pair = data.load_examples("test", real_data_dir, source="tfrecord")
    folder = data.load_examples("test", real_data_dir, source="folder")
    assert list(pair.paths) == list(folder.paths)
    assert list(pair.content_hashes()) == list(folder.content_hashes())
    images, _labels = next(iter(data.make_dataset(pair, batch_size=8)))
    assert images.shape == (8, 224, 224, 3) and float(np.max(images)) > 100.0


@pytest.mark.integration
def test_real_patient_split_has_no_leak(real_data_dir):
    splits = data.load_splits(real_data_dir)
    train, validation = splits["train"], splits["validation"]
    assert len(train) + len(validation) == 5216
    assert not set(train.patient_ids) & set(validation.patient_ids)
    assert not set(train.content_hashes()) & set(validation.content_hashes())
    assert 0.17 < len(validation) / 5216 < 0.23
    assert abs(validation.labels.mean() - train.labels.mean()) < 0.02
