"""Timed MIDI events <-> single-track MIDI files at one fixed tempo.

Both corpus sources (music21 scores and MMA grooves) end up as a list of ``(seconds, mido.Message)``; writing
them at one constant tempo makes the file's tempo map equal the bpm written in the caption.
"""

from __future__ import annotations

from dataclasses import dataclass

import mido

TICKS_PER_BEAT = 480
DRUM_CHANNEL = 9


@dataclass(frozen=True)
class Note:
    """A note in seconds on a MIDI channel."""

    start: float
    end: float
    pitch: int
    velocity: int
    channel: int


def notes_to_events(notes: list[Note], programs: dict[int, int], pans: dict[int, int] | None = None,
                    reverb: int = 40) -> list[tuple[float, mido.Message]]:
    """Channel setup at t=0 (program, volume, pan, reverb send) followed by note on/off pairs."""
    events: list[tuple[float, mido.Message]] = []
    for channel, program in sorted(programs.items()):
        if channel != DRUM_CHANNEL:
            events.append((0.0, mido.Message("program_change", channel=channel, program=program)))
        events.append((0.0, mido.Message("control_change", channel=channel, control=7, value=100)))
        events.append((0.0, mido.Message("control_change", channel=channel, control=10,
                                         value=(pans or {}).get(channel, 64))))
        events.append((0.0, mido.Message("control_change", channel=channel, control=91, value=reverb)))
    for n in notes:
        if n.end <= n.start:
            continue
        events.append((n.start, mido.Message("note_on", channel=n.channel, note=n.pitch, velocity=n.velocity)))
        events.append((n.end, mido.Message("note_off", channel=n.channel, note=n.pitch, velocity=0)))
    return events


def events_to_midi(events: list[tuple[float, mido.Message]], bpm: float, time_signature: tuple[int, int] = (4, 4),
                   title: str | None = None) -> mido.MidiFile:
    """A type-0 MIDI file at a constant tempo; note-offs sort before note-ons at the same tick (re-articulation)."""
    tempo = mido.bpm2tempo(bpm)
    mid = mido.MidiFile(type=0, ticks_per_beat=TICKS_PER_BEAT)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    if title:
        track.append(mido.MetaMessage("track_name", name=title[:120], time=0))
    track.append(mido.MetaMessage("set_tempo", tempo=tempo, time=0))
    num, den = time_signature
    if den in (1, 2, 4, 8, 16, 32):
        track.append(mido.MetaMessage("time_signature", numerator=num, denominator=den, time=0))

    def order(item: tuple[int, int, mido.Message]) -> tuple[int, int, int]:
        tick, seq, msg = item
        rank = 0 if msg.type in ("program_change", "control_change") else 1 if msg.type == "note_off" else 2
        return tick, rank, seq

    timed = [(int(round(mido.second2tick(t, TICKS_PER_BEAT, tempo))), i, m) for i, (t, m) in enumerate(events)]
    last = 0
    for tick, _, msg in sorted(timed, key=order):
        track.append(msg.copy(time=tick - last))
        last = tick
    return mid


def midi_to_events(mid: mido.MidiFile, until: float) -> list[tuple[float, mido.Message]]:
    """Channel messages with absolute times in seconds, cut at ``until`` with sounding notes closed there."""
    events: list[tuple[float, mido.Message]] = []
    sounding: set[tuple[int, int]] = set()
    now = 0.0
    for msg in mid:
        now += msg.time
        if now >= until:
            break
        if msg.is_meta or msg.type == "sysex":
            continue
        if msg.type == "note_on" and msg.velocity > 0:
            sounding.add((msg.channel, msg.note))
        elif msg.type in ("note_on", "note_off"):
            sounding.discard((msg.channel, msg.note))
        events.append((now, msg.copy(time=0)))
    for channel, note in sorted(sounding):
        events.append((until, mido.Message("note_off", channel=channel, note=note, velocity=0)))
    return events


def channel_programs(events: list[tuple[float, mido.Message]]) -> dict[int, int]:
    """Program heard on each channel that plays notes (drum channel reported as -1)."""
    current: dict[int, int] = {}
    heard: dict[int, int] = {}
    for _, msg in events:
        if msg.type == "program_change":
            current[msg.channel] = msg.program
        elif msg.type == "note_on" and msg.velocity > 0 and msg.channel not in heard:
            heard[msg.channel] = -1 if msg.channel == DRUM_CHANNEL else current.get(msg.channel, 0)
    return heard
