"""The LRA tasks beside ListOps, read from small files in each real format: what each reader
makes of them, the cache, bad input, and a few training steps of each through lra-train."""

from __future__ import annotations

import io
import json
import logging
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from lra.errors import LRAError
from lra.files import exclusive
from lra.records import read_records
from models.encoder import Classifier
from tasks import image, load_task, pathfinder, retrieval, text
from tasks.cache import CACHE_DIR
from tasks.sources import read_table
from tests.conftest import REPO, compose_config, run_cli
from tasks.samples import REVIEWS, png_bytes, write_aan, write_cifar, write_imdb
from tests.task_fixtures import follow_the_missing_data_hint, write_pathfinder_tree

TINY = ["model.num_layers=1", "model.dim=32", "model.num_heads=2", "model.mlp_dim=32", "trainer.batch_size=4",
        "trainer.max_steps=4", "trainer.eval_every=4", "trainer.checkpoint_every=4", "trainer.eval_batches=2",
        "trainer.progress=false"]


def fake_hub_cache(cache: Path, repo_id: str) -> Path:
    """A hub cache holding one snapshot of a dataset repository, as `datasets.load_dataset` leaves it."""
    repo = cache / f"datasets--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    return snapshot


def task_config(task: str, root: Path, *overrides: str):
    """The task's config object, as lra-train hands it to the task's loader."""
    return OmegaConf.to_object(compose_config(f"task={task}", f"data.root={root}", *overrides).task)


# --- lra-train on every task ----------------------------------------------------------------------


def build_root(task: str, root: Path, hub: Path) -> list[str]:
    """Write `task`'s fixture under root (or the fake hub cache); the overrides its run needs."""
    if task == "text":
        write_imdb(fake_hub_cache(hub, "stanfordnlp/imdb"))  # read through the hub cache, offline
        return ["task.max_len=64"]
    if task == "image":
        write_cifar(root / "cifar10")
        return []
    if task == "retrieval":
        write_aan(root / "tsv_data")
        return ["task.max_len=64"]
    if task == "pathfinder":
        write_pathfinder_tree(root / "pathfinder32" / "curv_contour_length_14", batches=3, per_batch=12)
        return []
    if task == "listops":
        return ["experiment=smoke"]  # generated, small
    return ["task.generate.count=24", "model=linformer"]  # pathx: generated at 128x128, an efficient variant


@pytest.mark.parametrize("protocol", ["clean", "lra"])
@pytest.mark.parametrize("task", ["listops", "text", "image", "retrieval", "pathfinder", "pathx"])
def test_every_task_trains_a_few_steps_through_lra_train(task, protocol, tmp_path: Path):
    root, hub, run = tmp_path / "data", tmp_path / "hub", tmp_path / "run"
    overrides = build_root(task, root, hub)
    result = run_cli("runners.train", f"task={task}", f"protocol={protocol}", f"data.root={root}",
                     f"hydra.run.dir={run}", *overrides, *TINY,
                     cwd=REPO, env={"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    [record] = read_records(run / "records.jsonl")
    assert record["status"] == "ok" and record["task"] == task and record["metrics"]["steps"] == 4
    assert record["config"]["hardware"]["paper_scale"] is False and record["protocol"] == protocol
    if protocol == "lra":  # the LRA file it follows, logged (and in the record's config)
        assert f"protocol lra: {record['config']['protocol']['source']}" in result.stdout + result.stderr
    assert 0 <= record["metrics"]["test_accuracy"] <= 1


def test_missing_text_data_says_where_it_looked_and_how_to_get_it(tmp_path: Path):
    result = run_cli("runners.train", "task=text", f"data.root={tmp_path / 'data'}",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=REPO,
                     env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("lra-train: error: no IMDb reviews")
    for needle in (str(tmp_path / "data" / "imdb"), str(tmp_path / "hub"), "datasets.load_dataset('stanfordnlp/imdb')"):
        assert needle in line
    assert not (tmp_path / "run" / "records.jsonl").exists()


# --- text --------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_text_is_utf8_bytes_truncated_and_validated_on_test(suffix, tmp_path: Path):
    write_imdb(tmp_path / "imdb", rows=10, suffix=suffix)
    config = task_config("text", tmp_path, "task.max_len=12", "task.val_fraction=null")  # LRA's validation
    data = text.load(config, tmp_path, generate=True, progress=False)
    assert config.vocab_size == 256 and config.towers == data.towers == 1 and len(data.train) == 10
    (tokens,), label = data.train[1]
    assert bytes(tokens.tolist()) == (REVIEWS[1] + " #1").encode("utf-8")[:12] and label == 1
    (empty,), _ = data.train[3]
    assert bytes(empty.tolist()) == b" #3"
    assert data.val is data.test


def mapped_file(array: np.ndarray) -> Path | None:
    """The file whose memory mapping holds the array's data, from this process's map (Linux)."""
    address = array.__array_interface__["data"][0]
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, *rest = line.split(maxsplit=5)
        start, end = (int(bound, 16) for bound in span.split("-"))
        if start <= address < end:
            return Path(rest[4]) if len(rest) == 5 else None
    return None


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the memory map of a Linux process")
def test_the_second_load_comes_from_the_cache_and_a_changed_setting_rebuilds(tmp_path: Path, monkeypatch):
    write_imdb(tmp_path / "imdb", rows=10)
    first = text.load(task_config("text", tmp_path, "task.max_len=12"), tmp_path, generate=True, progress=False)

    def unreachable(*args, **kwargs):
        raise AssertionError("the cache should have served this")

    monkeypatch.setattr(text, "read_texts", unreachable)
    again = text.load(task_config("text", tmp_path, "task.max_len=12"), tmp_path, generate=True, progress=False)
    [entry] = (tmp_path / CACHE_DIR).iterdir()
    (tokens,) = again.train.towers
    for array in (tokens.values, tokens.offsets, again.train.labels):  # views of the cache file, not copies
        assert mapped_file(array) == entry / "train.arrow" and not array.flags.writeable
    assert len(again.train) == len(first.train) == 9 and len(again.val) == 1  # a tenth held out (the default)
    assert [t.tolist() for (t,), _ in (again.train[i] for i in range(9))] == \
           [t.tolist() for (t,), _ in (first.train[i] for i in range(9))]
    with pytest.raises(AssertionError, match="cache should have served"):
        text.load(task_config("text", tmp_path, "task.max_len=13"), tmp_path, generate=True, progress=False)
    monkeypatch.undo()
    (tmp_path / "imdb" / "plain_text" / "train-00000-of-00001.parquet").touch()  # a replaced source file
    text.load(task_config("text", tmp_path, "task.max_len=12"), tmp_path, generate=True, progress=False)
    entries = [p for p in (tmp_path / CACHE_DIR).iterdir() if not p.name.startswith(".")]
    assert len(entries) == 2  # max_len 12, then 12 again after the source changed (13 never finished)


def test_text_labels_out_of_range_name_the_file_and_row(tmp_path: Path):
    write_imdb(tmp_path / "imdb", rows=4)
    path = tmp_path / "imdb" / "plain_text" / "train-00000-of-00001.parquet"
    pd.DataFrame({"text": ["a", "b"], "label": [1, 2]}).to_parquet(path)
    with pytest.raises(LRAError, match=r"train-00000-of-00001.parquet: row 2: label 2 is not a class 0-1"):
        text.load(task_config("text", tmp_path), tmp_path, generate=True, progress=False)
    assert not (tmp_path / CACHE_DIR).exists() or not any((tmp_path / CACHE_DIR).iterdir())


def test_a_csv_broken_past_its_first_batch_is_one_error_naming_it_and_nothing_else(tmp_path: Path, capfd):
    rows = ["text,label", *(f"review {i},{i % 2}" for i in range(20_000))]
    rows[15_001] = "x,1,2,3"  # past the first batch the loader reads
    path = tmp_path / "train.csv"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(LRAError, match=r"train.csv: not a readable csv file: .*line 15002"):
        read_table(path, ["text", "label"])
    assert capfd.readouterr().err == ""  # datasets' own log line would repeat the error


def test_a_missing_split_is_named(tmp_path: Path):
    write_imdb(tmp_path / "imdb", rows=4)
    (tmp_path / "imdb" / "plain_text" / "test-00000-of-00001.parquet").unlink()
    with pytest.raises(LRAError, match=r"imdb: no test split"):
        text.load(task_config("text", tmp_path), tmp_path, generate=True, progress=False)


# --- image -------------------------------------------------------------------------------------


def test_image_pixels_are_the_grayscale_luma_row_by_row_and_split_as_lra(tmp_path: Path):
    write_cifar(tmp_path / "cifar10", train=40, test=20)
    data = image.load(task_config("image", tmp_path), tmp_path, generate=True, progress=False)
    assert (len(data.train), len(data.val), len(data.test)) == (36, 4, 20)
    table = pd.read_parquet(tmp_path / "cifar10" / "plain_text" / "train-00000-of-00001.parquet")
    rgb = np.asarray(Image.open(io.BytesIO(table["img"][37]["bytes"]))).astype(float)
    luma = np.floor(rgb @ np.array([0.299, 0.587, 0.114]) + 0.5).reshape(-1)
    (pixels,), label = data.val[1]
    assert pixels.shape == (1024,) and label == 37 % 10
    assert np.abs(pixels.numpy() - luma).max() <= 1  # PIL's integer luma, within rounding


@pytest.mark.parametrize("problem, expected", [
    ("size", r"train-00000-of-00001.parquet: row 2: image of size 16x16, expected 32x32"),
    ("label", r"train-00000-of-00001.parquet: row 1: label 10 is not a class 0-9"),
])
def test_bad_images_and_labels_name_the_row(problem, expected, tmp_path: Path):
    write_cifar(tmp_path / "cifar10", train=4, test=2)
    path = tmp_path / "cifar10" / "plain_text" / "train-00000-of-00001.parquet"
    table = pd.read_parquet(path)
    if problem == "size":
        table.at[1, "img"] = {"bytes": png_bytes(np.zeros((16, 16, 3), np.uint8)), "path": "x.png"}
    else:
        table.at[0, "label"] = 10
    table.to_parquet(path)
    with pytest.raises(LRAError, match=expected):
        image.load(task_config("image", tmp_path), tmp_path, generate=True, progress=False)


# --- retrieval ---------------------------------------------------------------------------------


def test_retrieval_reads_both_documents_of_each_pair(tmp_path: Path):
    write_aan(tmp_path / "tsv_data", rows=6)
    config = task_config("retrieval", tmp_path, "task.max_len=20")
    data = retrieval.load(config, tmp_path, generate=True, progress=False)
    assert config.towers == data.towers == 2 and [len(data.train), len(data.val), len(data.test)] == [6, 6, 6]
    (left, right), label = data.train[5]
    assert bytes(left.tolist()) == "paper 5 on parsing é".encode()[:20] and label == 1
    assert bytes(right.tolist()) == b"paper 5 cites xxxxx"


@pytest.mark.parametrize("line, expected", [
    ("1\tP\tQ\tonly four\n", r"new_aan_pairs.train.tsv:3: expected 5 tab-separated fields .* got 4"),
    ("2.0\tP\tQ\ta\tb\n", r"new_aan_pairs.train.tsv:3: label '2.0' is not a class 0-1"),
    ("yes\tP\tQ\ta\tb\n", r"new_aan_pairs.train.tsv:3: label 'yes' is not a class 0-1"),
])
def test_bad_retrieval_rows_name_the_file_and_line(line, expected, tmp_path: Path):
    write_aan(tmp_path / "tsv_data", rows=4)
    path = tmp_path / "tsv_data" / "new_aan_pairs.train.tsv"
    rows = path.read_text().splitlines(keepends=True)
    path.write_text("".join(rows[:2] + [line] + rows[2:]))
    with pytest.raises(LRAError, match=expected):
        retrieval.load(task_config("retrieval", tmp_path), tmp_path, generate=True, progress=False)


def test_retrieval_fields_are_read_as_written_and_counted_on_each_line(tmp_path: Path):
    path = tmp_path / "new_aan_pairs.train.tsv"
    path.write_bytes(b'1\tP\tQ\t"a "b\rc\t\r\n0.0\tP\tQ\t#x\t y\n')  # quotes, a lone CR, an empty last field
    pairs = retrieval.read_pairs(path, num_classes=2, max_len=20, progress=False)
    assert [[bytes(doc.tolist()) for doc in docs] for docs, _ in pairs] == [[b'"a "b\rc', b""], [b"#x", b" y"]]
    assert pairs.labels.tolist() == [1, 0]
    path.write_bytes(b"1\tP\tQ\ta\tb\tc\n0\tP\tQ\tx\ty\n")  # one field too many, on the first line
    with pytest.raises(LRAError, match=r"new_aan_pairs.train.tsv:1: expected 5 tab-separated fields .* got 6"):
        retrieval.read_pairs(path, num_classes=2, max_len=20, progress=False)


def test_retrieval_missing_split_or_data(tmp_path: Path):
    with pytest.raises(LRAError, match=r"no ACL Anthology pairs .* lra_release"):
        retrieval.load(task_config("retrieval", tmp_path), tmp_path, generate=True, progress=False)
    write_aan(tmp_path / "tsv_data", rows=4)
    (tmp_path / "tsv_data" / "new_aan_pairs.eval.tsv").unlink()
    with pytest.raises(LRAError, match=r"tsv_data: missing split file new_aan_pairs.eval.tsv"):
        retrieval.load(task_config("retrieval", tmp_path), tmp_path, generate=True, progress=False)


def test_two_towers_share_the_encoder_and_classify_u_v_product_and_difference():
    cfg = compose_config("task=retrieval", "model.dim=16", "model.num_heads=2", "model.mlp_dim=8",
                         "model.num_layers=1").model
    torch.manual_seed(0)
    model = Classifier(cfg, 256, 2, max_len=12, towers=2).eval()
    tokens = torch.randint(256, (3, 2, 12))
    mask = torch.arange(12) < torch.tensor([[12, 5], [7, 12], [3, 9]])[..., None]
    u = model.encoder(tokens[:, 0], mask[:, 0])
    lengths = mask[:, 1].sum(dim=-1).tolist()
    v = torch.stack([model.encoder(tokens[i, 1, :n][None], mask[i, 1, :n][None])[0]
                     for i, n in enumerate(lengths)])  # each second document alone, unpadded
    expected = model.head(torch.cat([u, v, u * v, u - v], dim=-1))
    assert torch.allclose(model(tokens, mask), expected, atol=1e-5)


# --- pathfinder --------------------------------------------------------------------------------


def test_pathfinder_skips_the_broken_png_with_one_warning_and_splits_as_lra(tmp_path: Path, caplog):
    write_pathfinder_tree(tmp_path / "pathfinder32" / "curv_contour_length_14", batches=3, per_batch=10)
    with caplog.at_level(logging.WARNING):
        data = pathfinder.load(task_config("pathfinder", tmp_path), tmp_path, generate=False, progress=False)
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "skipped 1 unreadable image" in warning.getMessage() and "sample_3.png" in warning.getMessage()
    assert [len(data.train), len(data.val), len(data.test)] == [23, 3, 3]  # 29 readable images, 80/10/10
    (pixels,), label = data.train[0]
    png = np.asarray(Image.open(tmp_path / "pathfinder32" / "curv_contour_length_14" / "imgs" / "0" / "sample_0.png"))
    assert pixels.tolist() == png.reshape(-1).tolist() and label == 0


def test_pathfinder_wrong_image_size_and_bad_metadata_are_one_line(tmp_path: Path):
    folder = tmp_path / "pathfinder32" / "curv_contour_length_14"
    write_pathfinder_tree(folder, side=48, broken=None)
    with pytest.raises(LRAError, match=r"sample_0.png: image of size 48x48, expected 32x32"):
        pathfinder.load(task_config("pathfinder", tmp_path), tmp_path, generate=False, progress=False)
    write_pathfinder_tree(folder, broken=None)
    (folder / "metadata" / "1.npy").write_text("imgs/1 sample_0.png 0 7 14\n")
    with pytest.raises(LRAError, match=r"metadata/1.npy:1: label '7' is not 0 or 1"):
        pathfinder.load(task_config("pathfinder", tmp_path), tmp_path, generate=False, progress=False)


def test_pathfinder_without_data_and_generation_off_says_how_to_get_it(tmp_path: Path):
    with pytest.raises(LRAError, match=r"no Pathfinder images .*lra-data pathfinder --out .*pathfinder32"):
        pathfinder.load(task_config("pathfinder", tmp_path), tmp_path, generate=False, progress=False)


def test_the_missing_pathfinder_hint_runs_as_printed_and_the_task_then_loads(tmp_path: Path):
    data = follow_the_missing_data_hint(compose_config(
        "task=pathfinder", f"data.root={tmp_path}", "data.generate=false", "task.difficulty=easy",
        "task.generate.count=24", "task.generate.seed=3"))
    assert [len(data.train), len(data.val), len(data.test)] == [19, 2, 3]


def test_generated_pathfinder_is_read_back_and_other_settings_are_refused(tmp_path: Path):
    config = task_config("pathfinder", tmp_path, "task.generate.count=30", "task.difficulty=easy")
    data = pathfinder.load(config, tmp_path, generate=True, progress=False)
    assert len(data.train) + len(data.val) + len(data.test) == 30
    assert json.loads((tmp_path / "pathfinder32" / "curv_baseline" / "generator.json").read_text())["count"] == 30
    with pytest.raises(LRAError, match=r"generator.json: data generated with other settings: count=30"):
        pathfinder.load(task_config("pathfinder", tmp_path, "task.generate.count=40", "task.difficulty=easy"),
                        tmp_path, generate=True, progress=False)


# --- parallel jobs -----------------------------------------------------------------------------


def test_a_load_waits_while_another_job_holds_the_data_directory(tiny_cfg):
    cfg = tiny_cfg()
    root = Path(cfg.data.root)
    loaded = []
    loader = threading.Thread(target=lambda: loaded.append(load_task(cfg.task, cfg.data, progress=False)))
    with exclusive(root):
        loader.start()
        loader.join(timeout=1.0)
        assert loader.is_alive() and not (root / cfg.task.dir).exists()  # waiting, generated nothing yet
    loader.join(timeout=60)
    assert len(loaded) == 1 and len(loaded[0].train) == cfg.task.generate.train
