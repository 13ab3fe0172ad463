"""The real-music corpus builder: real audio, exact captions and MIDI, resumable, clear setup errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mido
import numpy as np
import pytest
import soundfile as sf
from data_fixtures import CORPUS_CLIP_SECONDS, CORPUS_CLIPS, CORPUS_SEED

from data_prep import captions
from data_prep.midi_util import Note, events_to_midi, notes_to_events
from data_prep.render import Renderer, RenderUnavailable
from data_prep.synth_corpus import build_synth_corpus


def _records(corpus_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (corpus_dir / "manifest.jsonl").read_text().splitlines()]


def test_corpus_is_real_captioned_music(synth_corpus):
    out, summary = synth_corpus["dir"], synth_corpus["summary"]
    assert summary["built"] == CORPUS_CLIPS and summary["failed"] == 0
    records = _records(out)
    assert len(records) == CORPUS_CLIPS
    sources = {r["source"].split(":")[0] for r in records}
    assert sources == {"music21", "mma"}, "seed 0 draws both score and groove clips"
    for r in records:
        audio, rate = sf.read(out / r["path"], dtype="float32", always_2d=True)
        assert rate == 32000 and audio.shape == (int(CORPUS_CLIP_SECONDS * 32000), 1)
        level = 20 * np.log10(np.sqrt(np.mean(audio**2)))
        assert -28.0 < level < -19.5, "-20 dBFS RMS, or less where the -1 dBFS peak ceiling wins"
        # Music, not noise or a constant tone: the level moves over time and most of it is audible.
        windows = audio[: len(audio) // 3200 * 3200, 0].reshape(-1, 3200)
        window_db = 20 * np.log10(np.sqrt(np.mean(windows**2, axis=1)) + 1e-9)
        assert np.mean(window_db > -45) > 0.8 and np.std(window_db) > 0.3
        side = json.loads((out / "audio" / f"{r['id']}.json").read_text())
        assert side["description"] == r["caption"]
        assert side["description"].startswith(("a slow", "a moderate", "a fast"))
        for field in ("title", "genre", "key", "bpm", "time_signature", "instruments", "source", "duration"):
            assert side[field] not in (None, "", []), field
        assert f"{side['bpm']} bpm" in side["description"] and side["key"] in side["description"]
        assert side["genre"] in side["description"]


def test_midi_kept_beside_audio_matches_caption(synth_corpus):
    out = synth_corpus["dir"]
    for r in _records(out):
        mid = mido.MidiFile(out / "audio" / r["midi"])
        tempos = [m.tempo for m in mid.tracks[0] if m.type == "set_tempo"]
        assert len(tempos) == 1 and round(mido.tempo2bpm(tempos[0])) == r["bpm"], "tempo map == caption bpm"
        notes = [m for m in mid if m.type == "note_on" and m.velocity > 0]
        assert len(notes) >= 4
        assert mid.length <= CORPUS_CLIP_SECONDS + 0.01
        programs = {m.program for m in mid.tracks[0] if m.type == "program_change"}
        if r["source"].startswith("music21:"):
            assert programs == set(r["gm_programs"])
            assert {captions.GM_NAMES[p] for p in programs} == set(r["instruments"])


def test_resume_writes_nothing_new(synth_corpus):
    out = synth_corpus["dir"]
    before = {p.name: p.stat().st_mtime_ns for p in (out / "audio").iterdir()}
    summary = build_synth_corpus(out, n_clips=CORPUS_CLIPS, clip_seconds=CORPUS_CLIP_SECONDS, seed=CORPUS_SEED,
                                 workers=2, progress=False)
    assert summary["built"] == 0 and summary["skipped"] == CORPUS_CLIPS
    after = {p.name: p.stat().st_mtime_ns for p in (out / "audio").iterdir()}
    assert after == before
    assert not [p for p in (out / "audio").iterdir() if ".tmp-" in p.name]


def test_other_settings_in_same_folder_are_refused(synth_corpus):
    with pytest.raises(ValueError, match="other settings"):
        build_synth_corpus(synth_corpus["dir"], n_clips=2, clip_seconds=3.0, seed=CORPUS_SEED, progress=False)


def test_one_clip_in_process_is_deterministic(synth_corpus, tmp_path):
    """Clip ids mean the same music whatever else was built: rebuild clip 0 alone (workers=1) and compare."""
    summary = build_synth_corpus(tmp_path, n_clips=1, clip_seconds=CORPUS_CLIP_SECONDS, seed=CORPUS_SEED,
                                 workers=1, progress=False)
    assert summary["built"] == 1
    ours = json.loads((tmp_path / "audio" / "s0-000000.json").read_text())
    theirs = json.loads((synth_corpus["dir"] / "audio" / "s0-000000.json").read_text())
    assert ours == theirs
    assert (tmp_path / "audio" / "s0-000000.mid").read_bytes() == \
        (synth_corpus["dir"] / "audio" / "s0-000000.mid").read_bytes()


def test_missing_soundfont_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MGEN_SOUNDFONT", str(tmp_path / "nope.sf2"))
    with pytest.raises(RenderUnavailable, match="nope.sf2"):
        build_synth_corpus(tmp_path / "c", n_clips=1, clip_seconds=2.0, progress=False)


def test_missing_fluidsynth_error_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fluidsynth", None)  # pyfluidsynth not importable
    monkeypatch.setenv("PATH", str(tmp_path))  # and no fluidsynth command either
    with pytest.raises(RenderUnavailable, match="install_system_deps.sh"):
        build_synth_corpus(tmp_path / "c", n_clips=1, clip_seconds=2.0, progress=False)


def test_cli_fallback_renders_when_binding_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "fluidsynth", None)
    renderer = Renderer(32000)
    assert renderer.backend == "cli"
    notes = [Note(0.1 + 0.25 * i, 0.3 + 0.25 * i, 60 + i, 90, 0) for i in range(6)]
    audio = renderer.render(events_to_midi(notes_to_events(notes, {0: 0}), bpm=120), 2.0)
    assert audio.shape == (64000, 2)
    assert 20 * np.log10(np.sqrt(np.mean(audio[3200:48000] ** 2))) > -50


def test_failed_scores_are_retried_then_counted(tmp_path, monkeypatch):
    """A score that fails to parse is retried with the next planned choice; all attempts failing counts a failure."""
    import data_prep.music21_source as m21

    calls = {"n": 0}
    real = m21.score_clip

    def flaky(work, collection, rng, seconds):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("broken score")
        return real(work, collection, rng, seconds)

    monkeypatch.setattr(m21, "score_clip", flaky)
    summary = build_synth_corpus(tmp_path / "ok", n_clips=1, clip_seconds=2.0, mma_fraction=0.0, workers=1,
                                 progress=False)
    assert summary["built"] == 1 and summary["retried"] == 1

    def broken(*args, **kwargs):
        raise ValueError("always broken")

    monkeypatch.setattr(m21, "score_clip", broken)
    summary = build_synth_corpus(tmp_path / "bad", n_clips=2, clip_seconds=2.0, mma_fraction=0.0, workers=1,
                                 progress=False)
    assert summary["built"] == 0 and summary["failed"] == 2
    assert "always broken" in summary["failures"][0]["reasons"][0]
    assert (tmp_path / "bad" / "manifest.jsonl").read_text() == ""


def test_caption_wording():
    text = captions.score_caption(bpm=144, mode="major", style="Irish traditional tune", ensemble="solo accordion",
                                  key=captions.key_text(7, "major"), time_signature="6/8", composer=None)
    assert text == "a fast, cheerful Irish traditional tune for solo accordion in G major, 6/8 time, 144 bpm"
    text = captions.groove_caption(bpm=100, mode="major", genre="bluegrass",
                                   instruments=["drums", "banjo", "acoustic bass"], key="A major", time_signature="4/4")
    assert text == ("a moderate, warm bluegrass accompaniment with acoustic bass, banjo and drums in A major, "
                    "4/4 time, 100 bpm")
    assert captions.key_text(10, "major") == "Bb major" and captions.key_text(1, "minor") == "C# minor"


def test_cli_synth_corpus_resumes(synth_corpus, capsys):
    from data_prep.cli import main

    rc = main(["prep", "synth-corpus", "-o", str(synth_corpus["dir"]), "--clips", str(CORPUS_CLIPS),
               "--clip-seconds", str(CORPUS_CLIP_SECONDS), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "0 clips built, 6 already there" in out and "manifest.jsonl" in out
    assert os.path.isfile(synth_corpus["dir"] / "manifest.jsonl")


INSTALL_SCRIPT = Path(__file__).resolve().parents[2] / "data_prep" / "install_system_deps.sh"


def test_install_script_is_a_no_op_when_everything_is_there():
    proc = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "all present" in proc.stdout


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"), reason="needs root to drop to another user")
def test_install_script_explains_when_not_root():
    """The real script, fed to bash on stdin: `nobody` need not be able to reach the checkout (a clone in a 0700
    home or `mktemp -d` folder), and runs from `/` for the same reason."""
    env = dict(os.environ, MGEN_SOUNDFONT_PKG="mgen-no-such-soundfont-package")
    proc = subprocess.run(["runuser", "-u", "nobody", "--", "bash", "-s"], input=INSTALL_SCRIPT.read_text(),
                          capture_output=True, text=True, timeout=60, env=env, cwd="/")
    assert proc.returncode != 0
    assert "mgen-no-such-soundfont-package" in proc.stderr and "root" in proc.stderr
