"""Captions for rendered clips, built only from facts we know exactly (score metadata and our render choices).

Nothing here is guessed from audio, so a caption never disagrees with its clip: tempo is the MIDI tempo we wrote
(quarter notes per minute), instruments are the General MIDI programs we played, the key is the analysed key of
the score shifted by our transposition.
"""

from __future__ import annotations

# General MIDI program numbers (0-based) -> plain names as a listener would say them.
GM_NAMES: tuple[str, ...] = (
    "piano", "bright piano", "electric grand piano", "honky-tonk piano", "electric piano", "electric piano",
    "harpsichord", "clavinet", "celesta", "glockenspiel", "music box", "vibraphone", "marimba", "xylophone",
    "tubular bells", "dulcimer", "drawbar organ", "percussive organ", "rock organ", "church organ", "reed organ",
    "accordion", "harmonica", "tango accordion", "nylon-string guitar", "steel-string guitar", "jazz guitar",
    "clean electric guitar", "muted electric guitar", "overdriven guitar", "distorted guitar", "guitar harmonics",
    "acoustic bass", "electric bass", "electric bass", "fretless bass", "slap bass", "slap bass", "synth bass",
    "synth bass", "violin", "viola", "cello", "contrabass", "tremolo strings", "pizzicato strings", "harp",
    "timpani", "strings", "strings", "synth strings", "synth strings", "choir", "voice", "synth voice",
    "orchestra hit", "trumpet", "trombone", "tuba", "muted trumpet", "french horn", "brass section", "synth brass",
    "synth brass", "soprano sax", "alto sax", "tenor sax", "baritone sax", "oboe", "english horn", "bassoon",
    "clarinet", "piccolo", "flute", "recorder", "pan flute", "blown bottle", "shakuhachi", "whistle", "ocarina",
    "square lead", "sawtooth lead", "calliope", "chiff lead", "charang", "voice lead", "fifths lead",
    "bass and lead synth", "new age pad", "warm pad", "polysynth pad", "choir pad", "bowed pad", "metallic pad",
    "halo pad", "sweep pad", "rain effect", "soundtrack effect", "crystal effect", "atmosphere effect",
    "brightness effect", "goblins effect", "echoes effect", "sci-fi effect", "sitar", "banjo", "shamisen", "koto",
    "kalimba", "bagpipe", "fiddle", "shanai", "tinkle bell", "agogo", "steel drums", "woodblock", "taiko drum",
    "melodic tom", "synth drum", "reverse cymbal", "guitar fret noise", "breath noise", "seashore", "bird tweet",
    "telephone ring", "helicopter", "applause", "gunshot",
)
assert len(GM_NAMES) == 128

DRUMS = "drums"

_SHARP_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
# Tonic spelled the way the key is usually written (fewest accidentals), per mode.
_MAJOR_TONICS = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_MINOR_TONICS = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")


def tonic_name(pitch_class: int, mode: str) -> str:
    """Conventional spelling of a key's tonic, e.g. (10, 'major') -> 'Bb'."""
    names = _MINOR_TONICS if mode == "minor" else _MAJOR_TONICS
    return names[pitch_class % 12]


def key_text(pitch_class: int, mode: str) -> str:
    """Human-readable key, e.g. 'G major', 'Bb minor'."""
    return f"{tonic_name(pitch_class, mode)} {mode}"


def tempo_word(bpm: float) -> str:
    """Coarse tempo class from quarter-note bpm."""
    if bpm < 80:
        return "slow"
    if bpm < 120:
        return "moderate"
    return "fast"


def mood_word(mode: str, bpm: float, variant: int = 0) -> str:
    """A mood adjective that follows from mode and tempo (the usual listener association), not a guess."""
    table = {
        ("major", "slow"): ("calm", "gentle", "peaceful"),
        ("major", "moderate"): ("warm", "bright", "relaxed"),
        ("major", "fast"): ("cheerful", "lively", "upbeat"),
        ("minor", "slow"): ("melancholic", "sombre", "wistful"),
        ("minor", "moderate"): ("moody", "pensive", "dark"),
        ("minor", "fast"): ("driving", "restless", "intense"),
    }
    words = table[("minor" if mode == "minor" else "major", tempo_word(bpm))]
    return words[variant % len(words)]


def join_names(names: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    names = [n for i, n in enumerate(names) if n not in names[:i]]
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def score_caption(*, bpm: int, mode: str, style: str, ensemble: str, key: str, time_signature: str,
                  composer: str | None, mood_variant: int = 0) -> str:
    """e.g. 'a fast, cheerful Irish traditional tune for solo accordion in G major, 6/8 time, 144 bpm'."""
    text = (f"{article(tempo_word(bpm))} {tempo_word(bpm)}, {mood_word(mode, bpm, mood_variant)} {style} for "
            f"{ensemble} in {key}, {time_signature} time, {bpm} bpm")
    if composer:
        text += f", in the style of {composer}"
    return text


def groove_caption(*, bpm: int, mode: str, genre: str, instruments: list[str], key: str, time_signature: str,
                   mood_variant: int = 0) -> str:
    """e.g. 'a moderate, warm bluegrass accompaniment with acoustic bass, banjo and drums in A major, 120 bpm'."""
    named = sorted(n for n in set(instruments) if n != DRUMS) + ([DRUMS] if DRUMS in instruments else [])
    return (f"{article(tempo_word(bpm))} {tempo_word(bpm)}, {mood_word(mode, bpm, mood_variant)} {genre} "
            f"accompaniment with {join_names(named)} in {key}, {time_signature} time, {bpm} bpm")
