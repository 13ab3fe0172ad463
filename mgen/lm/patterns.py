"""Codebook interleaving patterns (MusicGen paper, section 2.2).

The codec gives K parallel token streams (codebooks) per audio frame, but the LM produces one sequence
step at a time. A *pattern* decides which (frame t, codebook k) coordinates the model emits together at
each step: steps P_0..P_S, P_0 empty, each codebook at most once per step, and together the steps cover
every (t, k) exactly once. The LM predicts step s from steps < s, so the pattern trades sequence length
(cost) against how much of a frame is already known when a token is predicted (quality):

- ``parallel``: all K codebooks of frame t in one step (S = T + 1, inexact factorisation).
- ``delay``: codebook k lags by k frames (S = T + 1 + max delay; MusicGen's default).
- ``unroll``: one step per codebook (or per group of codebooks) per frame (S = K * T + 1, exact).
- ``coarse_first``: all of codebook 0 first, then the others frame by frame (VALL-E-like).
- ``musiclm``: groups of codebooks flattened over the whole clip, group after group.

Layouts match audiocraft's ``codebooks_patterns.py`` with two differences in representation, none in
behaviour. (1) audiocraft's providers loop past the last frame for delayed codebooks and keep the
resulting coordinates with t >= T in the layout (they are ignored later). Here ``get_pattern`` drops
them, so a layout is a true partition of the frames, and keeps their extent as ``Pattern.max_delay``
(audiocraft computes it from those very coordinates, and it cannot be recovered once they are gone).
(2) Logits are [B, K, S, card] (the LM's output layout) rather than audiocraft's [B, card, K, S].
"""

from __future__ import annotations

import bisect
import inspect
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

Coord = tuple[int, int]  # (t, k): frame t of codebook k

__all__ = [
    "Coord",
    "Pattern",
    "PatternProvider",
    "ParallelPattern",
    "DelayPattern",
    "UnrollPattern",
    "CoarseFirstPattern",
    "MusicLMPattern",
    "PATTERN_NAMES",
    "make_pattern",
    "stereo_delays",
]


@dataclass(frozen=True)
class Pattern:
    """A validated layout for ``timesteps`` frames of ``n_q`` codebooks, with the tensor ops that use it.

    ``max_delay`` is the number of trailing steps that only exist because some codebooks are delayed
    (audiocraft's definition: max frame + 1 over its unclipped layout, minus ``timesteps``; the
    providers compute it). Training keeps only the first ``num_steps - max_delay`` steps
    (``keep_only_valid_steps=True``): T + 1 steps for the delay pattern, whose last frames of the delayed
    codebooks then have no target.
    """

    layout: list[list[Coord]]
    timesteps: int
    n_q: int
    max_delay: int = 0
    # step_of[k, t] = index of the step holding (t, k); everything the tensor ops need derives from it.
    _step_of: Tensor = field(init=False, repr=False, compare=False)
    # reach[s] = largest frame in steps 0..s (-1 before any): non-decreasing, so bisect finds resume points.
    _reach: list[int] = field(init=False, repr=False, compare=False)
    _index_cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        T, K = self.timesteps, self.n_q
        if not _is_int(T) or T < 1:
            raise ValueError(f"timesteps must be a positive integer, got {T!r}")
        if not _is_int(K) or K < 1:
            raise ValueError(f"n_q must be a positive integer, got {K!r}")
        if len(self.layout) == 0 or len(self.layout[0]) != 0:
            raise ValueError("layout[0] must be the empty step [] (the all-special start step)")
        if not _is_int(self.max_delay) or not 0 <= self.max_delay < len(self.layout):
            raise ValueError(f"max_delay must be in [0, {len(self.layout) - 1}], got {self.max_delay!r}")

        step_of = [[-1] * T for _ in range(K)]
        last_t = [-1] * K
        reach, furthest = [], -1
        for s, step in enumerate(self.layout):
            seen: set[int] = set()
            for t, k in step:
                if not (_is_int(t) and _is_int(k) and 0 <= t < T and 0 <= k < K):
                    raise ValueError(f"step {s}: coordinate {(t, k)} outside timesteps={T}, n_q={K}")
                if k in seen:
                    raise ValueError(f"step {s} holds codebook {k} more than once")
                seen.add(k)
                if t <= last_t[k]:
                    what = "repeats" if t == last_t[k] else "comes after"
                    raise ValueError(f"step {s}: frame {t} of codebook {k} {what} frame {last_t[k]}; "
                                     f"each codebook must visit its frames once, in increasing order")
                step_of[k][t] = s
                last_t[k] = t
                furthest = max(furthest, t)
            reach.append(furthest)
        missing = [(t, k) for k in range(K) for t in range(T) if step_of[k][t] < 0]
        if missing:
            raise ValueError(f"layout does not cover {len(missing)} of the {K * T} coordinates, e.g. {missing[:4]}")
        object.__setattr__(self, "_step_of", torch.tensor(step_of, dtype=torch.long))
        object.__setattr__(self, "_reach", reach)

    # ------------------------------------------------------------------------------------ structure
    @property
    def num_steps(self) -> int:
        """S, the sequence length of the full pattern, step 0 included."""
        return len(self.layout)

    @property
    def valid_layout(self) -> list[list[Coord]]:
        """The steps used for training: the full layout without the ``max_delay`` trailing steps."""
        return self.layout[: len(self.layout) - self.max_delay]

    def first_step_at_or_after(self, t: int) -> int:
        """First step holding a frame >= t: where generation resumes after a prompt of t frames.

        All earlier steps hold only prompt frames. Returns ``num_steps`` when no frame >= t exists.
        """
        if t < 0:
            raise ValueError(f"t must be >= 0, got {t}")
        return bisect.bisect_left(self._reach, t)

    # ----------------------------------------------------------------------------------- tensor ops
    def build_sequence(self, codes: Tensor, special_token: int,
                       keep_only_valid_steps: bool = False) -> tuple[Tensor, Tensor]:
        """Lay out codes [B, K, T] as the pattern sequence [B, K, S] and its mask [K, S].

        mask is True where a real coordinate sits; every other slot holds ``special_token``. Code values
        are copied as they are (e.g. -1 for "not generated yet"), and the dtype is kept.
        With ``keep_only_valid_steps`` only ``valid_layout`` is used (S = len(valid_layout)).
        """
        if codes.dim() != 3:
            raise ValueError(f"codes must be [B, K, T], got shape {tuple(codes.shape)}")
        B, K, T = codes.shape
        if K != self.n_q:
            raise ValueError(f"codes have {K} codebooks but the pattern has n_q={self.n_q}")
        if T != self.timesteps:
            raise ValueError(f"codes have {T} frames but the pattern was built for timesteps={self.timesteps}")
        index, mask = self._cached(("build", bool(keep_only_valid_steps)), codes.device,
                                   lambda: self._build_index(bool(keep_only_valid_steps)))
        flat = torch.cat([codes.reshape(B, K * T), codes.new_full((B, 1), special_token)], dim=1)
        sequence = flat.index_select(1, index.reshape(-1)).view(B, K, index.shape[1])
        return sequence, mask.clone()

    def revert_sequence(self, sequence: Tensor, special_token: int,
                        keep_only_valid_steps: bool = False) -> tuple[Tensor, Tensor]:
        """Undo ``build_sequence``: sequence [B, K, S] -> (codes [B, K, T], mask [K, T]).

        S may be shorter than the pattern (a partly generated sequence): frames whose coordinate lies in
        a missing step come back as ``special_token`` with mask False.
        """
        B, K, S = self._check_steps(sequence, 3, keep_only_valid_steps, "sequence", "[B, K, S]")
        index, mask = self._cached(("sequence", S), sequence.device, lambda: self._revert_index(S, shift=0))
        flat = torch.cat([sequence.reshape(B, K * S), sequence.new_full((B, 1), special_token)], dim=1)
        codes = flat.index_select(1, index.reshape(-1)).view(B, K, self.timesteps)
        return codes, mask.clone()

    def revert_logits(self, logits: Tensor, keep_only_valid_steps: bool = False) -> tuple[Tensor, Tensor]:
        """Align model outputs with frames: logits [B, K, S, card] -> (logits [B, K, T, card], mask [K, T]).

        The output at step s predicts the coordinates of step s + 1 (the next-token shift is built in),
        so (t, k) in layout[s + 1] takes logits[:, k, s]. Frames without a prediction (their step is
        beyond S or, with ``keep_only_valid_steps``, beyond the valid layout) hold NaN so that misuse is
        loud; mask marks the valid targets. Pass the same ``keep_only_valid_steps`` as to build_sequence.
        """
        if not logits.is_floating_point():
            raise ValueError(f"logits must be floating point (NaN marks missing targets), got {logits.dtype}")
        B, K, S, card = self._check_steps(logits, 4, keep_only_valid_steps, "logits", "[B, K, S, card]")
        if S < 1:
            raise ValueError("logits must have at least one step")
        n_ref = self._steps(keep_only_valid_steps)
        index, mask = self._cached(("logits", S, n_ref), logits.device,
                                   lambda: self._revert_index(S, shift=1, n_ref=n_ref))
        out = logits.reshape(B, K * S, card).index_select(1, index.reshape(-1))
        out.masked_fill_(~mask.reshape(1, K * self.timesteps, 1), float("nan"))  # autograd-safe: fresh tensor
        return out.view(B, K, self.timesteps, card), mask.clone()

    # ------------------------------------------------------------------------------------- helpers
    def _steps(self, keep_only_valid_steps: bool) -> int:
        """Length of the layout in use: len(valid_layout) or num_steps (without copying the list)."""
        return self.num_steps - self.max_delay if keep_only_valid_steps else self.num_steps

    def _check_steps(self, x: Tensor, ndim: int, keep_only_valid_steps: bool, name: str,
                     shape: str) -> tuple[int, ...]:
        if x.dim() != ndim:
            raise ValueError(f"{name} must be {shape}, got shape {tuple(x.shape)}")
        if x.shape[1] != self.n_q:
            raise ValueError(f"{name} has {x.shape[1]} codebooks but the pattern has n_q={self.n_q}")
        limit = self._steps(keep_only_valid_steps)
        if x.shape[2] > limit:
            raise ValueError(f"{name} has {x.shape[2]} steps, more than the {limit} of the pattern"
                             + (" (valid steps only)" if keep_only_valid_steps else ""))
        return tuple(x.shape)

    def _cached(self, key: tuple, device: torch.device,
                make: Callable[[], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """Index tensors are built once per pattern, length and device (no host work per call)."""
        key = key + (str(device),)
        hit = self._index_cache.get(key)
        if hit is None:
            hit = tuple(x.to(device) for x in make())
            self._index_cache[key] = hit
        return hit

    def _build_index(self, keep_only_valid_steps: bool) -> tuple[Tensor, Tensor]:
        """[K, S] positions into the flattened codes, K*T being the appended special token."""
        K, T = self.n_q, self.timesteps
        S = self._steps(keep_only_valid_steps)
        k = torch.arange(K).unsqueeze(1).expand(K, T)
        t = torch.arange(T).unsqueeze(0).expand(K, T)
        inside = self._step_of < S
        index = torch.full((K, S), K * T, dtype=torch.long)
        index[k[inside], self._step_of[inside]] = (k * T + t)[inside]
        return index, index != K * T

    def _revert_index(self, S: int, shift: int, n_ref: int | None = None) -> tuple[Tensor, Tensor]:
        """[K, T] positions into the flattened [K, S] input, K*S being the appended filler.

        shift=1 reads the output of the previous step (model logits); then only steps < n_ref count.
        """
        K = self.n_q
        step = self._step_of - shift
        valid = (step >= 0) & (step < S)
        if n_ref is not None:
            valid &= self._step_of < n_ref
        # logits are gathered without a filler slot (saves a copy of the whole tensor), so any in-range
        # index will do there; the caller overwrites those rows with NaN.
        filler = 0 if shift else K * S
        index = torch.where(valid, torch.arange(K).unsqueeze(1) * S + step, torch.full_like(step, filler))
        return index, valid


def _is_int(x: object) -> bool:
    """Integers, numpy's included, but not bools."""
    return type(x) is int or (isinstance(x, numbers.Integral) and not isinstance(x, bool))


# ---------------------------------------------------------------------------------------- providers
class PatternProvider(ABC):
    """Builds the pattern of a given length for a fixed number of codebooks, caching it per length."""

    _CACHE_SIZE = 64

    def __init__(self, n_q: int) -> None:
        if not _is_int(n_q) or n_q < 1:
            raise ValueError(f"n_q must be a positive integer, got {n_q!r}")
        self.n_q = int(n_q)
        self._patterns: dict[int, Pattern] = {}

    @abstractmethod
    def layout(self, timesteps: int) -> list[list[Coord]]:
        """The steps for ``timesteps`` frames, step 0 empty.

        Like audiocraft's providers, a layout may run past the clip and hold coordinates with
        t >= timesteps (delayed codebooks); ``get_pattern`` drops them and turns their extent into
        ``Pattern.max_delay``.
        """

    def get_pattern(self, timesteps: int) -> Pattern:
        """The validated pattern for ``timesteps`` frames (cached: training asks for the same length often)."""
        pattern = self._patterns.get(timesteps)
        if pattern is None:
            if not _is_int(timesteps) or timesteps < 1:
                raise ValueError(f"timesteps must be a positive integer, got {timesteps!r}")
            raw = self.layout(timesteps)
            end = max((t + 1 for step in raw for t, _ in step), default=0)
            layout = [[(t, k) for t, k in step if t < timesteps] for step in raw]
            pattern = Pattern(layout, timesteps, self.n_q, max_delay=max(0, end - timesteps))
            if len(self._patterns) >= self._CACHE_SIZE:
                self._patterns.pop(next(iter(self._patterns)))
            self._patterns[timesteps] = pattern
        return pattern

    def __repr__(self) -> str:
        options = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in options.items())})"


class ParallelPattern(PatternProvider):
    """All codebooks of frame t at step t + 1: the shortest sequence, but codebooks of a frame are
    predicted independently of each other."""

    def layout(self, timesteps: int) -> list[list[Coord]]:
        return [[]] + [[(t, k) for k in range(self.n_q)] for t in range(timesteps)]


class DelayPattern(PatternProvider):
    """Codebook k lags by ``delays[k]`` frames (MusicGen's default, delays 0..K-1), so the finer codebooks
    of a frame are predicted after its coarser ones at almost no extra length.

    ``flatten_first`` frames are emitted one codebook per step before the delayed part starts, and
    ``empty_initial`` adds empty steps after step 0 (both as in audiocraft). Unlike audiocraft, delays
    need not be sorted: any non-negative delays give a valid pattern.
    """

    def __init__(self, n_q: int, delays: Sequence[int] | None = None, flatten_first: int = 0,
                 empty_initial: int = 0) -> None:
        super().__init__(n_q)
        self.delays = _int_list("delays", list(range(n_q)) if delays is None else delays, n_q)
        self.flatten_first = _count("flatten_first", flatten_first)
        self.empty_initial = _count("empty_initial", empty_initial)

    def layout(self, timesteps: int) -> list[list[Coord]]:
        first = self.flatten_first
        out: list[list[Coord]] = [[] for _ in range(1 + self.empty_initial)]
        out += [[(t, k)] for t in range(min(timesteps, first)) for k in range(self.n_q)]
        for s in range(first, timesteps + max(self.delays)):
            out.append([(s - d, k) for k, d in enumerate(self.delays) if s - d >= first])
        return out


class UnrollPattern(PatternProvider):
    """Each frame becomes several steps, one per flattening group (default: one codebook per step), which
    models a frame exactly at K times the length.

    Codebooks with the same ``flattening`` value share a step; an unused value leaves an empty step.
    ``delays`` (equal within a group) shift a group by that many frames, as in audiocraft: at equal
    position, empty steps come first, then the earlier frame, then the lower codebook. Delays need not
    be sorted across groups (audiocraft asserts it; nothing depends on it).
    """

    def __init__(self, n_q: int, flattening: Sequence[int] | None = None,
                 delays: Sequence[int] | None = None) -> None:
        super().__init__(n_q)
        self.flattening = _int_list("flattening", list(range(n_q)) if flattening is None else flattening, n_q)
        self.delays = _int_list("delays", [0] * n_q if delays is None else delays, n_q)
        if sorted(self.flattening) != self.flattening:
            raise ValueError(f"flattening must be non-decreasing, got {self.flattening}")
        self._groups: dict[int, list[int]] = {}
        self._group_delay: dict[int, int] = {}
        for k, (g, d) in enumerate(zip(self.flattening, self.delays)):
            if self._group_delay.setdefault(g, d) != d:
                raise ValueError(f"codebooks flattened into the same step must share a delay: flattening="
                                 f"{self.flattening}, delays={self.delays}")
            self._groups.setdefault(g, []).append(k)

    def layout(self, timesteps: int) -> list[list[Coord]]:
        end = timesteps + max(self.delays)
        entries: list[tuple[int, list[Coord]]] = []  # (position, coordinates), sorted below
        for t in range(end):
            for g in range(max(self.flattening) + 1):
                if g not in self._groups:
                    entries.append((t, []))
                elif t + self._group_delay[g] < end:
                    entries.append((t + self._group_delay[g], [(t, k) for k in self._groups[g]]))
        entries.sort(key=lambda entry: (entry[0], entry[1]))
        return [[]] + [coords for _, coords in entries]


class CoarseFirstPattern(PatternProvider):
    """All of codebook 0 first, then codebooks 1..K-1 frame by frame (optionally delayed): VALL-E-like.

    The second half depends on the whole first half, so always generate the full training length
    (audiocraft warns the same; this provider was called VALLEPattern there before v1.1).
    """

    def __init__(self, n_q: int, delays: Sequence[int] | None = None) -> None:
        super().__init__(n_q)
        self.delays = _int_list("delays", [0] * (n_q - 1) if delays is None else delays, n_q - 1,
                                what="one per codebook 1..n_q-1")

    def layout(self, timesteps: int) -> list[list[Coord]]:
        out: list[list[Coord]] = [[]] + [[(t, 0)] for t in range(timesteps)]
        if self.delays:  # with a single codebook there is no second half
            for s in range(timesteps + max(self.delays)):
                out.append([(s - d, k) for k, d in enumerate(self.delays, start=1) if s - d >= 0])
        return out


class MusicLMPattern(PatternProvider):
    """Groups of ``group_by`` codebooks, each flattened over the whole clip, group after group (like
    MusicLM's coarse-then-fine stages, but in a single LM)."""

    def __init__(self, n_q: int, group_by: int = 2) -> None:
        super().__init__(n_q)
        if not _is_int(group_by) or group_by < 1 or n_q % group_by:
            raise ValueError(f"group_by must be a positive divisor of n_q={n_q}, got {group_by!r}")
        self.group_by = int(group_by)

    def layout(self, timesteps: int) -> list[list[Coord]]:
        out: list[list[Coord]] = [[]]
        for first in range(0, self.n_q, self.group_by):
            out += [[(t, k)] for t in range(timesteps) for k in range(first, first + self.group_by)]
        return out


def _int_list(name: str, values: Sequence[int], length: int, what: str = "one per codebook") -> list[int]:
    values = list(values)
    if len(values) != length:
        raise ValueError(f"{name} must have {length} entries ({what}), got {len(values)}: {values}")
    if not all(_is_int(v) and v >= 0 for v in values):
        raise ValueError(f"{name} must hold non-negative integers, got {values}")
    return [int(v) for v in values]


def _count(name: str, value: int) -> int:
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def stereo_delays(n_q_per_channel: int) -> list[int]:
    """Delays of the published stereo MusicGen: 2K codebooks ordered [L0, R0, L1, R1, ...], where left
    and right codebook k share delay k, so both channels of a level are predicted together."""
    if not _is_int(n_q_per_channel) or n_q_per_channel < 1:
        raise ValueError(f"n_q_per_channel must be a positive integer, got {n_q_per_channel!r}")
    return [k for k in range(n_q_per_channel) for _ in ("left", "right")]


_PROVIDERS: dict[str, type[PatternProvider]] = {
    "parallel": ParallelPattern,
    "delay": DelayPattern,
    "unroll": UnrollPattern,
    "coarse_first": CoarseFirstPattern,
    "musiclm": MusicLMPattern,
}
PATTERN_NAMES: tuple[str, ...] = tuple(_PROVIDERS)


def make_pattern(name: str, n_q: int, **options) -> PatternProvider:
    """The provider called ``name`` (one of PATTERN_NAMES), so configs can pick a pattern by string."""
    cls = _PROVIDERS.get(name)
    if cls is None:
        raise ValueError(f"unknown pattern {name!r}; valid names: {', '.join(PATTERN_NAMES)}")
    accepted = [p for p in inspect.signature(cls).parameters if p != "n_q"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"pattern {name!r} does not take options {unknown}; it accepts {accepted or 'none'}")
    return cls(n_q, **options)
