"""boneage_core.rsna and .splits: every RSNA layout as downloaded -> one clean table, split; bad files -> one error."""

from __future__ import annotations

import logging
import os

import pandas as pd
import pytest

from boneage_core import BoneAgeError
from boneage_core.rsna import DataReport, Skipped, load_table
from boneage_core.splits import age_bins, split_table
from tests.conftest import BAD_FILES, break_image, make_kaggle


def test_kaggle_layout_reads_ids_ages_sex_and_paths(kaggle_dir):
    table = load_table(kaggle_dir)
    assert list(table.columns) == ["id", "path", "age_months", "male", "split"]
    assert len(table) == 12 and set(table["split"]) == {"train"}
    assert table["age_months"].tolist()[:3] == [20.0, 35.0, 50.0]
    assert table["male"].tolist()[:2] == [True, False]
    assert all(os.path.isfile(p) for p in table["path"])


def test_doubled_kaggle_folder_is_found(tmp_path):
    table = load_table(make_kaggle(tmp_path / "k", doubled=True))
    assert len(table) == 12
    assert all("boneage-training-dataset/boneage-training-dataset" in p for p in table["path"])


@pytest.mark.parametrize("values", [("TRUE", "FALSE"), ("1", "0"), ("True", "False"), ("M", "F")])
def test_sex_spellings_are_understood(tmp_path, values):
    table = load_table(make_kaggle(tmp_path / "k", n=4, male_values=values))
    assert table["male"].tolist() == [True, False, True, False]


def test_official_release_uses_its_validation_and_xlsx_test_sets(official_dir):
    table = load_table(official_dir)
    counts = table["split"].value_counts().to_dict()
    assert counts == {"train": 10, "val": 6, "test": 4}
    val = table[table["split"] == "val"]
    # the validation images lie in two folders
    assert {os.path.basename(os.path.dirname(p)) for p in val["path"]} == {
        "boneage-validation-dataset-1",
        "boneage-validation-dataset-2",
    }
    test = table[table["split"] == "test"].sort_values("id")
    assert test["male"].tolist() == [False, True, False, True]  # Sex F/M
    assert test["age_months"].tolist() == [50.0, 80.0, 110.0, 140.0]
    # official splits are kept as they are
    assert split_table(table, seed=0)["split"].value_counts().to_dict() == counts


def test_seeded_split_is_stratified_saved_and_reused(tmp_path):
    table = load_table(make_kaggle(tmp_path / "k", n=60))
    split_file = tmp_path / "split.csv"
    first = split_table(table, seed=3, split_file=split_file)
    assert split_file.is_file()
    assert first["split"].value_counts().to_dict() == {"train": 42, "val": 9, "test": 9}
    # stratified by age bin and sex: every stratum with four or more images is in the held-out 30% at
    # about its share of the data, not left to chance
    strata = age_bins(first["age_months"].to_numpy()) * 2 + first["male"].to_numpy().astype(int)
    held = first["split"].isin(["val", "test"]).to_numpy()
    for stratum in set(strata):
        n = int((strata == stratum).sum())
        if n >= 4:
            assert abs(held[strata == stratum].sum() - 0.3 * n) <= 1, (stratum, n)
    again = split_table(table, seed=3, split_file=split_file)
    assert again["split"].tolist() == first["split"].tolist()
    # the saved file wins over the seed: a rerun never reshuffles
    assert split_table(table, seed=99, split_file=split_file)["split"].tolist() == first["split"].tolist()
    assert split_table(table, seed=99)["split"].tolist() != first["split"].tolist()


def test_a_few_missing_images_are_skipped_and_counted(kaggle_dir):
    (kaggle_dir / "boneage-training-dataset" / "1377.png").unlink()
    report = DataReport()
    table = load_table(kaggle_dir, report)
    assert len(table) == 11 and report.skipped == [Skipped("train", "1377", "", "missing")]
    assert report.labelled == {"train": 12}
    report.check_share()  # 8% of 12, but one bad file alone is never a broken download


@pytest.mark.parametrize("kind,reason", BAD_FILES, ids=[k for k, _ in BAD_FILES])
def test_a_file_that_did_not_arrive_whole_is_skipped_with_its_reason(tmp_path, kind, reason):
    root = make_kaggle(tmp_path / "k", n=20)
    break_image(root / "boneage-training-dataset" / "1380.png", kind)
    report = DataReport()
    table = load_table(root, report)  # never hangs (a FIFO is not opened) nor raises
    assert len(table) == 19 and "1380" not in set(table["id"])
    [skipped] = report.skipped
    assert (skipped.split, skipped.id) == ("train", "1380") and reason in skipped.reason
    report.check_share()  # 1 of 20 is 5%: a few bad files, not a broken download


def test_more_than_5_percent_bad_in_a_split_is_a_broken_download(tmp_path):
    root = make_kaggle(tmp_path / "k", n=20)
    (root / "boneage-training-dataset" / "1380.png").unlink()
    break_image(root / "boneage-training-dataset" / "1381.png", "truncated")
    report = DataReport()
    assert len(load_table(root, report)) == 18
    with pytest.raises(BoneAgeError, match=r"split train: 2 of 20 labelled images \(10%\) are missing or unreadable"):
        report.check_share()


def test_symlinked_images_and_folders_are_followed(tmp_path):
    shared = make_kaggle(tmp_path / "shared-disk", n=12)  # the real files, on "another disk"
    root = tmp_path / "assembled"
    root.mkdir()
    (root / "boneage-training-dataset.csv").symlink_to(shared / "boneage-training-dataset.csv")
    (root / "boneage-training-dataset").mkdir()
    for png in sorted((shared / "boneage-training-dataset").iterdir())[:6]:  # six linked one by one
        (root / "boneage-training-dataset" / png.name).symlink_to(png)
    extra = tmp_path / "more"  # and a linked folder holding the other six
    extra.mkdir()
    for png in sorted((shared / "boneage-training-dataset").iterdir())[6:]:
        os.link(png, extra / png.name)
    (root / "boneage-training-dataset" / "batch2").symlink_to(extra, target_is_directory=True)
    (extra / "loop").symlink_to(extra, target_is_directory=True)  # a folder loop ends the walk, not the run
    table = load_table(root)
    assert len(table) == 12
    assert all(p.startswith(str(root)) for p in table["path"])  # the path under root, not the target


@pytest.mark.parametrize("bad_id", ["../../etc/passwd", "/etc/passwd", "..", "sub/1377"])
def test_a_label_id_that_is_a_path_is_refused(kaggle_dir, bad_id):
    path = kaggle_dir / "boneage-training-dataset.csv"
    df = pd.read_csv(path, dtype=str)
    df.loc[3, "id"] = bad_id
    df.to_csv(path, index=False)
    with pytest.raises(BoneAgeError, match=r"row 5, column 'id' = .* is not an image id"):
        load_table(kaggle_dir)


def test_official_label_files_are_found_as_csv_and_in_doubled_folders(official_dir):
    test_dir = official_dir / "Bone Age Test Set"
    xlsx = test_dir / "Bone age ground truth.xlsx"
    pd.read_excel(xlsx).to_csv(test_dir / "Bone age ground truth.csv", index=False)  # a CSV export
    xlsx.unlink()
    report = DataReport()
    table = load_table(official_dir, report)
    assert table["split"].value_counts().to_dict() == {"train": 10, "val": 6, "test": 4}
    assert "Bone Age Test Set/Bone age ground truth.csv" in report.label_files and report.not_found == []
    doubled = official_dir / "Bone Age Validation Set" / "Bone Age Validation Set"
    doubled.mkdir()
    (official_dir / "Bone Age Validation Set" / "Validation Dataset.csv").rename(doubled / "Validation Dataset.csv")
    report = DataReport()
    table = load_table(official_dir, report)
    assert table["split"].value_counts().to_dict() == {"train": 10, "val": 6, "test": 4}
    assert "Bone Age Validation Set/Bone Age Validation Set/Validation Dataset.csv" in report.label_files


def test_a_split_folder_without_its_label_file_is_named_in_a_warning(official_dir, caplog):
    (official_dir / "Bone Age Test Set" / "Bone age ground truth.xlsx").unlink()
    report = DataReport()
    with caplog.at_level(logging.WARNING):
        table = load_table(official_dir, report)
    assert set(table["split"]) == {"train", "val"}
    [note] = report.not_found
    assert "folder 'Bone Age Test Set' is there but its label file" in note and "Bone age ground truth.xlsx" in note
    assert "Bone age ground truth.xlsx" in caplog.text and "carved from the training images" in caplog.text
    # a Kaggle copy simply has no official val/test: said without a warning
    caplog.clear()
    report = DataReport()
    load_table(make_kaggle(official_dir.parent / "k"), report)
    assert [n.split(":")[0] for n in report.not_found] == ["val", "test"] and "WARNING" not in caplog.text


def _edit_csv(root, **changes):
    path = root / "boneage-training-dataset.csv"
    df = pd.read_csv(path, dtype=str)
    for fn in changes.values():
        df = fn(df)
    df.to_csv(path, index=False)


BAD_TABLES = [
    ("missing column", lambda df: df.drop(columns=["boneage"]), "column 'boneage' is missing"),
    ("non-numeric age", lambda df: df.assign(boneage=["abc"] + list(df.boneage[1:])), "'abc' is not an age"),
    ("negative age", lambda df: df.assign(boneage=["-3"] + list(df.boneage[1:])), "= -3 is not an age"),
    ("NaN age", lambda df: df.assign(boneage=[""] + list(df.boneage[1:])), "is not an age"),
    ("age above 300", lambda df: df.assign(boneage=["301"] + list(df.boneage[1:])), "= 301 is not an age"),
    ("unknown sex", lambda df: df.assign(male=["maybe"] + list(df.male[1:])), "unrecognised sex value 'maybe'"),
    ("duplicate id", lambda df: df.assign(id=[df.id[1]] + list(df.id[1:])), "duplicate id"),
]


@pytest.mark.parametrize("case,edit,message", BAD_TABLES, ids=[c[0] for c in BAD_TABLES])
def test_bad_label_file_names_the_problem(kaggle_dir, case, edit, message):
    _edit_csv(kaggle_dir, edit=edit)
    with pytest.raises(BoneAgeError, match="boneage-training-dataset.csv") as info:
        load_table(kaggle_dir)
    assert message in str(info.value)


def test_directory_problems_name_the_directory(tmp_path):
    with pytest.raises(BoneAgeError, match="does not exist"):
        load_table(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BoneAgeError, match="is empty"):
        load_table(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hi")
    with pytest.raises(BoneAgeError, match="no training label file"):
        load_table(tmp_path / "other")


def test_every_image_missing_is_an_error(kaggle_dir):
    for p in (kaggle_dir / "boneage-training-dataset").iterdir():
        p.unlink()
    with pytest.raises(BoneAgeError, match="none of its 12 images was found"):
        load_table(kaggle_dir)
