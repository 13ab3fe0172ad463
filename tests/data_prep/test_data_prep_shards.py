"""The sharding pipeline on real files: every input kind, read-back, resume after a kill, corrupt inputs, job arrays."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds
from data_fixtures import (CORPUS_CLIP_SECONDS, CORPUS_CLIPS, copy_corpus_audio, index_of, read_shard, report_of, tone,
                           write_tone)

from data_prep.shards import MissingCaptionError, ShardConfig, merge_indexes, split_of, write_shards
from mgen.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]


def _check_shards_against_index(out: Path) -> dict[str, list[dict]]:
    """Every shard listed exists, hashes match, counts and durations match the decoded content."""
    index = index_of(out)
    by_split: dict[str, list[dict]] = {"train": [], "valid": []}
    for entry in index["shards"]:
        path = out / entry["name"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        assert path.stat().st_size == entry["bytes"]
        samples = read_shard(path)
        assert len(samples) == entry["samples"] > 0
        seconds = sum(s["audio"].shape[0] / s["rate"] for s in samples)
        assert seconds == pytest.approx(entry["seconds"], abs=1e-3)
        for s in samples:
            assert s["rate"] == index["config"]["sample_rate"]
            assert s["audio"].shape[1] == index["config"]["channels"]
            assert s["meta"]["split"] == entry["split"] and s["meta"]["duration"] == pytest.approx(
                s["audio"].shape[0] / s["rate"], abs=1e-6)
        by_split[entry["split"]] += samples
    for split in ("train", "valid"):
        assert index["splits"][split]["samples"] == len(by_split[split])
    assert index["totals"]["samples"] == sum(len(v) for v in by_split.values())
    train_sources = {s["meta"]["source"] for s in by_split["train"]}
    valid_sources = {s["meta"]["source"] for s in by_split["valid"]}
    assert not train_sources & valid_sources, "a source file must never be in both splits"
    return by_split


def test_folder_input_roundtrip_with_webdataset(synth_corpus, tmp_path):
    out = tmp_path / "shards"
    summary = write_shards(synth_corpus["dir"], out, ShardConfig(valid_fraction=0.3, shard_max_samples=2), workers=2,
                           progress=False)
    assert summary["inputs"] == CORPUS_CLIPS and summary["problems"] == 0 and summary["missing_captions"] == 0
    by_split = _check_shards_against_index(out)
    assert by_split["train"] and by_split["valid"], "seed-0 corpus with 30% valid gives both splits"
    for samples in by_split.values():
        for s in samples:
            assert s["meta"]["caption"].startswith("a ") and s["meta"]["meta"]["bpm"] > 0
            assert s["audio"].shape[0] == int(CORPUS_CLIP_SECONDS * 32000)
            level = 20 * np.log10(np.sqrt(np.mean(s["audio"] ** 2)))
            assert level == pytest.approx(-20.0, abs=1.0)
    names = [e["name"] for e in index_of(out)["shards"]]
    assert names[0] == "train-000000.tar" and "valid-000000.tar" in names

    # The same shards read by webdataset itself (what training uses).
    urls = [str(out / n) for n in names]
    seen = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert len(seen) == CORPUS_CLIPS
    for sample in seen:
        audio, rate = sf.read(io.BytesIO(sample["flac"]))
        assert rate == 32000 and len(audio) == int(CORPUS_CLIP_SECONDS * 32000)
        assert "." not in sample["__key__"] and json.loads(sample["json"])["caption"]

    # A finished run is a no-op: nothing rewritten, same index.
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    again = write_shards(synth_corpus["dir"], out, ShardConfig(valid_fraction=0.3, shard_max_samples=2), workers=1,
                         progress=False)
    assert again["shards_written"] == 0 and again["shards_resumed"] == summary["shards_planned"]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == mtimes


def test_csv_manifest_input(synth_corpus, tmp_path):
    manifest = tmp_path / "musiccaps.csv"
    records = [json.loads(x) for x in (synth_corpus["dir"] / "manifest.jsonl").read_text().splitlines()]
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ytid", "path", "caption", "aspect_list"])
        for r in records:
            writer.writerow([r["id"], str(synth_corpus["dir"] / r["path"]), f"csv caption for {r['id']}", "['x']"])
    out = tmp_path / "shards"
    write_shards(manifest, out, ShardConfig(sample_rate=16000, channels=2, valid_fraction=0.0, loudness_db=None),
                 workers=1, progress=False)
    samples = _check_shards_against_index(out)["train"]
    assert len(samples) == CORPUS_CLIPS
    assert {s["meta"]["caption"] for s in samples} == {f"csv caption for {r['id']}" for r in records}
    assert all(s["audio"].shape == (int(CORPUS_CLIP_SECONDS * 16000), 2) for s in samples)
    assert samples[0]["meta"]["meta"]["ytid"].startswith("s0-")


def test_jsonl_and_audiocraft_manifests(synth_corpus, tmp_path):
    # The corpus' own manifest.jsonl (relative paths, caption column).
    out = tmp_path / "from_jsonl"
    write_shards(synth_corpus["dir"] / "manifest.jsonl", out, ShardConfig(valid_fraction=0.3), workers=1,
                 progress=False)
    assert sum(len(v) for v in _check_shards_against_index(out).values()) == CORPUS_CLIPS

    # An audiocraft data.jsonl: path, duration, sample_rate; captions only in the per-file MusicInfo .json.
    audio = copy_corpus_audio(synth_corpus["dir"], tmp_path / "ac_audio")
    for side in audio.glob("*.json"):
        info = json.loads(side.read_text())
        side.write_text(json.dumps({k: info[k] for k in ("title", "key", "bpm", "genre", "moods", "description")}))
    rows = [{"path": str(p), "duration": CORPUS_CLIP_SECONDS, "sample_rate": 32000, "amplitude": None,
             "weight": None, "info_path": None} for p in sorted(audio.glob("*.flac"))]
    egs = tmp_path / "egs" / "train"
    egs.mkdir(parents=True)
    (egs / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out2 = tmp_path / "from_audiocraft"
    summary = write_shards(egs / "data.jsonl", out2, ShardConfig(valid_fraction=0.3), workers=1, progress=False)
    assert summary["missing_captions"] == 0
    samples = [s for v in _check_shards_against_index(out2).values() for s in v]
    assert len(samples) == CORPUS_CLIPS
    assert all(s["meta"]["caption"] == s["meta"]["meta"]["description"] for s in samples)


def test_musicinfo_without_description_gets_a_tag_caption(tmp_path):
    src = tmp_path / "in"
    write_tone(src / "a.wav", 1.0, caption=None)
    (src / "a.json").write_text(json.dumps({"genre": "rock", "moods": ["energetic", "dark"], "key": "E minor",
                                            "bpm": 120, "instrument": "guitar", "description": ""}))
    write_shards(src, tmp_path / "out", ShardConfig(valid_fraction=0.0), workers=1, progress=False)
    (sample,) = read_shard(tmp_path / "out" / "train-000000.tar")
    assert sample["meta"]["caption"] == "rock, energetic, dark, guitar, in E minor, 120 bpm"


def test_segmenting_long_files(tmp_path):
    src = tmp_path / "in"
    write_tone(src / "long.wav", 12.5, rate=44100, channels=2, caption="a long tone")
    write_tone(src / "short.flac", 1.0, rate=22050, channels=1, caption="a short tone")
    write_tone(src / "mid" / "x.wav", 4.6, rate=48000, channels=1, caption="a mid tone")
    out = tmp_path / "out"
    summary = write_shards(src, out, ShardConfig(segment_seconds=3.0, valid_fraction=0.0, shard_max_samples=3),
                           workers=1, progress=False)
    samples = _check_shards_against_index(out)["train"]
    long = [s for s in samples if s["meta"]["source"] == "long.wav"]
    # 12.5 s in 3 s pieces: 4 full + a 0.5 s tail, dropped (shorter than the default half segment).
    assert [s["meta"]["start"] for s in long] == [0.0, 3.0, 6.0, 9.0]
    assert all(s["audio"].shape == (96000, 1) for s in long)
    mid = [s for s in samples if s["meta"]["source"] == "mid/x.wav"]
    assert [s["meta"]["start"] for s in mid] == [0.0, 3.0]
    assert [s["audio"].shape[0] for s in mid] == [96000, pytest.approx(51200, abs=1)]  # 1.6 s tail kept
    assert not [s for s in samples if s["meta"]["source"] == "short.flac"]
    assert {r["path"] for r in report_of(out)} == {str((src / "short.flac").resolve())}
    assert summary["problems"] == 1 and index_of(out)["shards"][0]["samples"] == 3
    keys = [s["key"] for s in samples]
    assert len(set(keys)) == len(keys)


def test_split_by_source_hash_is_stable():
    sources = [f"dir/file_{i}.wav" for i in range(2000)]
    valid = [s for s in sources if split_of(s, 0.1) == "valid"]
    assert 140 < len(valid) < 260
    assert valid == [s for s in sources if split_of(s, 0.1) == "valid"]
    assert all(split_of(s, 0.0) == "train" for s in sources)


def _corrupt_folder(root: Path) -> dict[str, str]:
    """Two good files plus one of each kind of broken input; returns {path: expected reason fragment}."""
    write_tone(root / "good1.wav", 2.0, caption="good one")
    write_tone(root / "good2.flac", 2.0, caption="good two")
    bad = {}
    full = root / "truncated.flac"
    write_tone(full, 6.0, caption="cut short")
    data = full.read_bytes()
    full.write_bytes(data[: len(data) // 3])
    bad[str(full.resolve())] = "decode failed"  # libsndfile: "flac decoder lost sync"
    (root / "empty.wav").write_bytes(b"")
    bad[str((root / "empty.wav").resolve())] = "not readable as audio"
    (root / "notes.wav").write_text("this is not audio at all\n" * 20)
    bad[str((root / "notes.wav").resolve())] = "not readable as audio"
    nan = np.zeros((32000, 1), np.float32)
    nan[1000:2000] = np.nan
    sf.write(str(root / "nan.wav"), nan, 32000, subtype="FLOAT")
    (root / "nan.txt").write_text("nan audio")
    bad[str((root / "nan.wav").resolve())] = "NaN"
    write_tone(root / "badmeta.wav", 2.0, caption=None)
    (root / "badmeta.json").write_text('{"description": "unterminated')
    bad[str((root / "badmeta.wav").resolve())] = "invalid JSON"
    return bad


def test_corrupt_inputs_are_reported_and_skipped(tmp_path):
    src = tmp_path / "in"
    expected = _corrupt_folder(src)
    out = tmp_path / "out"
    summary = write_shards(src, out, ShardConfig(valid_fraction=0.0), workers=1, progress=False)
    report = report_of(out)
    assert {r["path"] for r in report} == set(expected)
    for r in report:
        assert expected[r["path"]].lower() in r["reason"].lower(), r
    samples = _check_shards_against_index(out)["train"]
    assert sorted(s["meta"]["source"] for s in samples) == ["good1.wav", "good2.flac"]
    totals = index_of(out)["totals"]
    assert totals["skipped_inputs"] + totals["skipped_samples"] == len(expected)
    assert summary["problems"] + summary["skipped_samples"] == len(expected)
    assert summary["missing_captions"] == 0, "unreadable files are reported, not counted as uncaptioned"


def test_job_array_merge_equals_single_run(synth_corpus, tmp_path):
    config, kwargs = ShardConfig(valid_fraction=0.3, shard_max_samples=1), dict(workers=1, progress=False)
    single = tmp_path / "single"
    write_shards(synth_corpus["dir"], single, config, **kwargs)
    array = tmp_path / "array"
    first = write_shards(synth_corpus["dir"], array, config, task_index=0, num_tasks=2, **kwargs)
    assert "index" not in first and not (array / "shards.json").exists()
    with pytest.raises(ValueError, match=r"tasks \[1\] of 2"):
        merge_indexes(array)
    write_shards(synth_corpus["dir"], array, config, task_index=1, num_tasks=2, **kwargs)
    merged = merge_indexes(array)
    assert merged == index_of(single)
    assert (array / "shards.json").read_bytes() == (single / "shards.json").read_bytes()
    assert sorted(p.name for p in array.glob("*.tar")) == sorted(p.name for p in single.glob("*.tar"))


def test_slurm_environment_picks_the_task(synth_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    summary = write_shards(synth_corpus["dir"], tmp_path, ShardConfig(shard_max_samples=1, valid_fraction=0.0),
                           workers=1, progress=False)
    assert (summary["task_index"], summary["num_tasks"]) == (1, 3)
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["train-000001.tar", "train-000004.tar"]


_KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    import data_prep.shards as shards
    real = shards._load_sample
    def slow(spec, config):  # slow enough that the kill lands mid-run
        time.sleep(0.05)
        return real(spec, config)
    shards._load_sample = slow
    shards.write_shards(sys.argv[1], sys.argv[2],
                        shards.ShardConfig(segment_seconds=1.0, shard_max_samples=1, valid_fraction=0.3), workers=1,
                        progress=False)
""")


def test_killed_run_resumes_to_identical_shards(synth_corpus, tmp_path):
    config = ShardConfig(segment_seconds=1.0, shard_max_samples=1, valid_fraction=0.3)
    kwargs = dict(workers=1, progress=False)
    reference = tmp_path / "reference"
    write_shards(synth_corpus["dir"], reference, config, **kwargs)
    ref_hashes = {e["name"]: e["sha256"] for e in index_of(reference)["shards"]}
    assert len(ref_hashes) == CORPUS_CLIPS * 5

    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(synth_corpus["dir"]), str(out)], env=env)
    deadline = time.monotonic() + 60
    try:
        while not (out / "done").is_dir() or len(list((out / "done").glob("*.json"))) < 2:
            assert proc.poll() is None, "writer finished or crashed before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished = list((out / "done").glob("*.tar.json"))
    assert 2 <= len(finished) < len(ref_hashes), "killed mid-run"
    assert not (out / "shards.json").exists()
    # Whatever is under a final shard name is complete: byte-identical to the uninterrupted run's shard.
    for tar in out.glob("*.tar"):
        assert hashlib.sha256(tar.read_bytes()).hexdigest() == ref_hashes[tar.name]

    summary = write_shards(synth_corpus["dir"], out, config, **kwargs)
    assert summary["shards_resumed"] >= len(finished) and summary["shards_written"] >= 1
    assert summary["shards_resumed"] + summary["shards_written"] == len(ref_hashes)
    assert index_of(out) == index_of(reference)
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    for tar in out.glob("*.tar"):
        assert hashlib.sha256(tar.read_bytes()).hexdigest() == ref_hashes[tar.name]
        with tarfile.open(tar) as t:
            assert all(m.mtime == 0 for m in t.getmembers())


def test_changed_options_rewrite_shards(tmp_path):
    src = tmp_path / "in"
    write_tone(src / "a.wav", 2.0)
    out = tmp_path / "out"
    write_shards(src, out, ShardConfig(valid_fraction=0.0), workers=1, progress=False)
    first = index_of(out)["shards"][0]["sha256"]
    summary = write_shards(src, out, ShardConfig(valid_fraction=0.0, loudness_db=-30.0), workers=1, progress=False)
    assert summary["shards_written"] == 1
    assert index_of(out)["shards"][0]["sha256"] != first


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_shards(tmp_path / "missing", tmp_path / "out", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no audio here")
    with pytest.raises(ValueError, match="no audio found"):
        write_shards(empty, tmp_path / "out", progress=False)
    src = tmp_path / "in"
    write_tone(src / "a.wav", 1.0, caption="captioned")
    write_tone(src / "b.wav", 1.0, caption=None)
    for rate in (0, -16000, 10**9, 32000.5):
        with pytest.raises(ValueError, match="sample rate"):
            write_shards(src, tmp_path / "out", ShardConfig(sample_rate=rate), progress=False)
    with pytest.raises(MissingCaptionError, match=r"1 of 2 inputs have no caption .*b\.wav"):
        write_shards(src, tmp_path / "out", require_caption=True, progress=False)
    assert not (tmp_path / "out" / "shards.json").exists()
    with pytest.warns(UserWarning, match="no caption"):
        summary = write_shards(src, tmp_path / "out", ShardConfig(valid_fraction=0.0), workers=1, progress=False)
    assert summary["missing_captions"] == 1 and summary["samples"] == 2
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("ytid,caption\nabc,hello\n")
    with pytest.raises(ValueError, match="no audio path column.*ytid, caption"):
        write_shards(bad_csv, tmp_path / "out2", progress=False)


def test_cli_shards_and_merge(synth_corpus, tmp_path, capsys):
    import argparse

    from data_prep import cli

    # The same wiring mgen/cli.py uses: register() on a subparsers object, then args.func(args).
    parser = argparse.ArgumentParser(prog="mgen")
    cli.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "out"
    for task in ("0", "1"):
        args = parser.parse_args(["prep", "shards", str(synth_corpus["dir"]), "--out", str(out), "--workers", "1",
                                  "--task-index", task, "--num-tasks", "2", "--shard-max-samples", "2",
                                  "--valid-fraction", "0.3", "--no-progress"])
        assert args.func(args) == 0
    assert "--merge" in capsys.readouterr().out
    args = parser.parse_args(["prep", "shards", "--merge", "--out", str(out)])
    assert args.func(args) == 0
    assert "shards.json" in capsys.readouterr().out
    _check_shards_against_index(out)
    assert cli.main(["prep", "shards", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_sbatch_template_runs_as_a_job_array(synth_corpus, tmp_path):
    """Run slurm/prep_shards.sbatch with bash as Slurm would (two array tasks, then the merge job)."""
    out = tmp_path / "out"
    base = dict(os.environ, PYTHONPATH=str(REPO), OUT=str(out), INPUTS=str(synth_corpus["dir"]),
                MGEN=f"{sys.executable} -m data_prep.cli", SLURM_CPUS_PER_TASK="1", SLURM_ARRAY_TASK_COUNT="2",
                SLURM_ARRAY_TASK_MIN="0", EXTRA_ARGS="--shard-max-samples 2 --valid-fraction 0.3")
    script = str(REPO / "slurm" / "prep_shards.sbatch")
    for task in ("0", "1"):
        subprocess.run(["bash", script], env=dict(base, SLURM_ARRAY_TASK_ID=task), cwd=tmp_path, check=True,
                       capture_output=True)
    subprocess.run(["bash", script], env=dict(base, MERGE="1"), cwd=tmp_path, check=True, capture_output=True)
    reference = tmp_path / "reference"
    write_shards(synth_corpus["dir"], reference, ShardConfig(shard_max_samples=2, valid_fraction=0.3), workers=1,
                 progress=False)
    assert index_of(out) == index_of(reference)


def _write_track(path: Path, sections: list[tuple[float, float]], rate: int = 16000) -> None:
    """A mono file of consecutive (seconds, frequency) tones, so a test can tell which part was cut."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.concatenate([tone(seconds, rate, 1, freq) for seconds, freq in sections]), rate)


def _dominant_hz(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio.mean(axis=1)))
    return float(np.argmax(spectrum) * rate / audio.shape[0])


def test_musiccaps_csv_with_downloaded_clips(tmp_path, capsys):
    """The MusicCaps CSV + the user's downloads: a whole recording is cut at start_s, a downloaded clip is taken
    whole, a missing file and a file that is neither are skipped and counted; keys are ytids, captions come from
    the CSV, every clip is 10 s and in 'valid' (or split by hash when a fraction is given)."""
    clips = tmp_path / "clips"
    _write_track(clips / "AAAAAAAAAA1.wav", [(30.0, 220.0), (10.0, 880.0), (5.0, 220.0)])  # the YouTube recording
    _write_track(clips / "[-aBcDeFgH_1]-[100-110].flac", [(10.05, 440.0)])  # a downloader's 10 s clip
    _write_track(clips / "DDDDDDDDDD4.wav", [(20.0, 440.0)])  # shorter than the clip's end, longer than the clip
    manifest = tmp_path / "musiccaps-public.csv"
    columns = ["ytid", "start_s", "end_s", "audioset_positive_labels", "aspect_list", "caption", "author_id",
               "is_balanced_subset", "is_audioset_eval"]
    rows = [["AAAAAAAAAA1", 30, 40, "/m/04rlf", "['pop', 'piano']", "A piano melody, bright and calm.", 4, False, True],
            ["-aBcDeFgH_1", 100, 110, "/m/04rlf", "['rock']", "A loud rock guitar riff.", 2, True, False],
            ["CCCCCCCCCC3", 0, 10, "/m/04rlf", "['jazz']", "A jazz trio.", 1, False, True],
            ["DDDDDDDDDD4", 30, 40, "/m/04rlf", "['folk']", "A folk song.", 7, False, False]]
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([columns, *rows])

    out = tmp_path / "shards"
    args = ["prep", "shards", str(manifest), "--audio-dir", str(clips), "-o", str(out), "--sample-rate", "16000",
            "--no-loudness", "--workers", "1", "--no-progress"]
    assert cli_main(args) == 0
    assert "1 MusicCaps clips have no audio file" in capsys.readouterr().err
    index = index_of(out)
    assert index["splits"]["valid"]["samples"] == 2 and index["splits"]["train"]["samples"] == 0
    assert index["totals"]["missing_audio"] == 1
    samples = {s["key"]: s for s in _check_shards_against_index(out)["valid"]}
    assert set(samples) == {"AAAAAAAAAA1", "-aBcDeFgH_1"}
    recording, clip = samples["AAAAAAAAAA1"], samples["-aBcDeFgH_1"]
    assert recording["meta"]["caption"] == "A piano melody, bright and calm."
    assert clip["meta"]["caption"] == "A loud rock guitar riff."
    for sample in (recording, clip):
        assert sample["rate"] == 16000 and sample["audio"].shape == (160000, 1) and sample["meta"]["duration"] == 10.0
        assert sample["meta"]["meta"]["ytid"] == sample["key"]
    assert recording["meta"]["start"] == 30.0 and abs(_dominant_hz(recording["audio"], 16000) - 880.0) < 5
    assert clip["meta"]["start"] == 0.0 and abs(_dominant_hz(clip["audio"], 16000) - 440.0) < 5
    report = {Path(r["path"]).name: r for r in report_of(out)}
    assert report["CCCCCCCCCC3.*"]["stage"] == "missing"
    assert "neither the 10 s clip nor a recording" in report["DDDDDDDDDD4.wav"]["reason"]

    # told otherwise: with a valid fraction the clips are split by hash like any input (here: all train)
    summary = write_shards(manifest, tmp_path / "split",
                           ShardConfig(sample_rate=16000, valid_fraction=0.0, loudness_db=None), audio_dir=clips,
                           workers=1, progress=False)
    assert summary["missing_audio"] == 1
    assert index_of(tmp_path / "split")["splits"]["train"]["samples"] == 2
    # --audio-dir for inputs that are not a MusicCaps CSV is a mistake, said in one line
    assert cli_main(["prep", "shards", str(clips), "--audio-dir", str(clips), "-o", str(tmp_path / "x")]) == 2
    assert "--audio-dir" in capsys.readouterr().err


def test_nothing_usable_is_an_error_pointing_at_the_report(tmp_path, capsys):
    """Inputs that are all silent or NaN: exit code 2, one line pointing at report.jsonl, no (empty) index.
    One usable input among them is a success that counts the skips."""
    from mgen.cli import main

    src = tmp_path / "in"
    src.mkdir()
    sf.write(str(src / "silent.wav"), np.zeros((32000, 1), np.float32), 32000)
    nan = np.zeros((32000, 1), np.float32)
    nan[100] = np.nan
    sf.write(str(src / "nan.wav"), nan, 32000, subtype="FLOAT")
    for name in ("silent", "nan"):
        (src / f"{name}.txt").write_text(f"{name} audio")
    out = tmp_path / "out"
    assert main(["prep", "shards", str(src), "-o", str(out), "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing usable found" in err and str(out / "report.jsonl") in err
    assert not (out / "shards.json").exists() and not list(out.glob("*.tar"))
    assert {Path(r["path"]).name for r in report_of(out)} == {"silent.wav", "nan.wav"}

    write_tone(src / "good.wav", 1.0, caption="a tone")
    assert main(["prep", "shards", str(src), "-o", str(out), "--workers", "1", "--no-progress"]) == 0
    assert "skipped 0 inputs and 2 samples" in capsys.readouterr().out
    assert index_of(out)["totals"]["samples"] == 1 and index_of(out)["totals"]["skipped_samples"] == 2


def test_a_file_as_output_folder_is_a_clear_error(tmp_path, capsys):
    from mgen.cli import main

    write_tone(tmp_path / "in" / "a.wav", 1.0)
    taken = tmp_path / "taken"
    taken.write_text("a file the user made")
    for command in (["prep", "shards", str(tmp_path / "in"), "-o", str(taken)],
                    ["prep", "shards", str(tmp_path / "in"), "--out", str(taken / "sub")],
                    ["prep", "tokenize", str(tmp_path / "in"), "--codec", "codec", "-o", str(taken)],
                    ["prep", "synth-corpus", "-o", str(taken), "--clips", "1"]):
        assert main(command) == 2, command
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{taken} is a file" in err, err
        assert taken.read_text() == "a file the user made"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "taken"]  # nothing made beside it
