"""A seeded Pathfinder generator (Linsley et al. 2018), writing the layout of the LRA release.

An image holds contours: chains of short line segments ("paddles") separated by small gaps, each
paddle turning from the previous one by a bounded angle ("continuity"). Two main contours of
`contour_length` paddles start `seed_distance` apart; shorter distractor contours fill the rest.
Two white disc markers go on contour ends: both ends of one main contour (label 1, connected) or
one end of each (label 0). The contours are drawn before the label is used, so the two classes
differ only in where the markers sit: same ink, same number of markers, same contours.

Drawing follows Linsley's generator (github.com/drewlinsley/pathfinder, snakes2.py): strokes of
different contours keep two margins apart, as far as consecutive paddles of one contour; turns are
drawn with density cos^2(continuity * turn); the image is drawn at `antialias_scale` times the
resolution and box-filtered down. Geometry is vectorised numpy on complex points: all candidate
turns of a paddle are checked at once against the placed paddles near it, and all strokes are
stamped at once, so one process draws a 32x32 image in a few milliseconds.

Unlike Linsley's generator (which retried whole contours), a contour that runs into a dead end
takes back its newest paddle and redraws it, and the conditions on the markers (seed_distance
apart, clear of the other contour) are imposed while drawing rather than checked afterwards.
"""

from __future__ import annotations

import cmath
import json
import math
import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from lra.errors import LRAError
from lra.files import remove_stale_temporaries, temporary_name

RESOLUTIONS = (32, 64, 128)
# difficulty -> (folder of the LRA release, paddles per main contour)
DIFFICULTIES: dict[str, tuple[str, int]] = {
    "easy": ("curv_baseline", 6),
    "intermediate": ("curv_contour_length_9", 9),
    "hard": ("curv_contour_length_14", 14),
}
IMAGES_PER_BATCH = 1000  # images per imgs/<batch>/ folder, as the LRA release
SETTINGS_FILE = "generator.json"


@dataclass(frozen=True)
class Settings:
    """Generator settings at one resolution; lengths are in output pixels."""

    paddle_margins: tuple[int, ...]  # gap scale; one is drawn per image (Linsley's paddle_margin_list)
    padding: int  # contours keep this far from the border
    paddle_length: int
    marker_radius: float
    paddle_thickness: float
    antialias_scale: int
    seed_distance: int  # distance of the two main contours' first ends; least distance of the markers
    continuity: float  # turns are at most 90 / continuity degrees
    distractor_paddles: int  # num_distractor_snakes = distractor_paddles // distractor_length
    snake_contrast: float
    paddle_contrast: float


# LRA's settings, from the docstrings of its TFDS builders (google-research/long-range-arena,
# lra_benchmarks/data/pathfinder.py: Pathfinder32, Pathfinder64, Pathfinder128); paddle_contrast
# at 64 and 128 is the default of Linsley's snakes2_wrapper.py, which those builders kept.
# paddle_length is listed only at 32 (2 pixels): it is scaled with the resolution here (4 at 64,
# 8 at 128), so that contours look alike at every size, dashes about a sixteenth of the image.
# LRA's `contour_length / 3` ran under Python 2, so distractor lengths and counts floor-divide.
SETTINGS: dict[int, Settings] = {
    32: Settings(paddle_margins=(1,), padding=1, paddle_length=2, marker_radius=1.5, paddle_thickness=0.5,
                 antialias_scale=2, seed_distance=7, continuity=1.0, distractor_paddles=20,
                 snake_contrast=2.0, paddle_contrast=0.75),
    64: Settings(paddle_margins=(1,), padding=1, paddle_length=4, marker_radius=2.5, paddle_thickness=1.0,
                 antialias_scale=2, seed_distance=12, continuity=1.8, distractor_paddles=22,
                 snake_contrast=0.8, paddle_contrast=1.0),
    128: Settings(paddle_margins=(2, 3), padding=1, paddle_length=8, marker_radius=3.0, paddle_thickness=1.5,
                  antialias_scale=2, seed_distance=20, continuity=1.8, distractor_paddles=35,
                  snake_contrast=0.9, paddle_contrast=1.0),
}

# Candidate turns per paddle (see _Sketch.turn_candidates); seeds are drawn in batches of
# _SEED_CANDIDATES and the first that fits is taken.
_TURN_STRATA = 32
_SEED_CANDIDATES = 16
_DISTRACTOR_TRIES = 5  # Linsley's max_distractor_contour_retrial = 4, plus the first try
_SECOND_TRIES = 3  # second contours tried beside one first contour before both are redrawn
_MAIN_TRIES = 2000  # attempts at the two main contours before giving up (never reached in practice)
_LABEL_STREAM = 1  # spawn key of the label order's generator, apart from every image's [seed, j]


def contour_shape(resolution: int, difficulty: str) -> tuple[int, int, int]:
    """(contour_length, distractor_length, num_distractor_snakes) of one resolution and difficulty."""
    contour_length = DIFFICULTIES[difficulty][1]
    distractor_length = contour_length // 3
    return contour_length, distractor_length, SETTINGS[resolution].distractor_paddles // distractor_length


def _distances(points: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Least distance of each point (M,) to any of segments (S, 2 ends): shape (M,)."""
    start, along = segments[:, 0], segments[:, 1] - segments[:, 0]
    offset = points[:, None] - start  # (M, S)
    t = np.clip((offset * along.conj()).real / np.maximum(np.square(np.abs(along)), 1e-12), 0.0, 1.0)
    return np.abs(offset - t * along).min(axis=1)


class _Sketch:
    """The contours of one image as they are placed: paddle segments, and points that keep later
    paddles at a distance. Points are complex numbers x + iy, in output pixels.

    Every paddle is kept as points along it; a new paddle fits when it is inside the padding and
    each of its points is farther than (its radius + the other's) from every kept point, except
    those of the paddle it continues (only a gap apart). A paddle's radius is half the least
    centre-line distance of paddles of different contours, (thickness + 2 margin) / 2: their
    strokes stay 2 margins apart, as far as consecutive paddles of one contour. A marker's radius
    is its own: strokes of other contours stay a margin off its disc.
    """

    def __init__(self, rng: np.random.Generator, settings: Settings, resolution: int, capacity: int):
        self.rng = rng
        self.settings = settings
        self.margin = float(rng.choice(settings.paddle_margins))
        self.radius = settings.paddle_thickness / 2 + self.margin
        self.step = settings.paddle_length + 2 * self.margin  # joint to joint
        self.low, self.high = settings.padding, resolution - settings.padding
        # where a paddle is kept as points (distances from its start): closer than its radius, so
        # that no paddle slips between two
        self.along = np.linspace(0.0, 1.0, math.ceil(settings.paddle_length / self.radius) + 1) * settings.paddle_length
        # Turns: the allowed range, (-90, 90) / continuity degrees, cut in equal strata, each
        # holding one candidate (all shifted by one uniform draw); a candidate weighs
        # cos^2(continuity * turn), Linsley's turn density, where it fits and 0 where it does not.
        # No fitting direction is missed, so a dead end is a real one.
        self.stratum = np.pi / _TURN_STRATA
        self.strata = np.arange(_TURN_STRATA) * self.stratum - np.pi / 2  # continuity * turn
        # the points of each candidate paddle from its joint, before turning by the shift
        self.fan = np.exp(1j * self.strata / settings.continuity)[:, None] * (self.margin + self.along)
        self.points = np.empty(capacity * len(self.along) + 4, dtype=complex)
        self.reach = np.empty(len(self.points))  # least distance of a new paddle's points to each
        self.kept = 0
        self.segments: list[tuple[complex, complex]] = []
        # a paddle leaving a joint lies within margin + paddle_length of it: kept points farther
        # than that plus the largest reach cannot be too close
        self.local = self.margin + settings.paddle_length + self.radius + max(self.radius, settings.marker_radius)
        self.middle = resolution / 2  # joints within `interior` of it (each axis) have every paddle inside
        self.interior = resolution / 2 - settings.padding - self.margin - settings.paddle_length

    def fits(self, points: np.ndarray, joint: complex | None = None) -> np.ndarray:
        """Which candidate paddles (rows of points along them) fit. Given the joint they leave
        from, they continue the newest kept paddle, whose points are left out."""
        kept, reach = self.points[:self.kept], self.reach[:self.kept]
        if joint is not None:
            near = np.abs(kept - joint) < self.local
            near[self.kept - len(self.along):] = False  # the paddle continued
            kept, reach = kept[near], reach[near]
        clear = np.abs(points.reshape(-1, 1) - kept) > reach  # (K * P, N)
        fit = clear.reshape(len(points), points.shape[1] * len(kept)).all(axis=1)
        if joint is None or max(abs(joint.real - self.middle), abs(joint.imag - self.middle)) > self.interior:
            fit &= np.all((points.real >= self.low) & (points.real <= self.high)
                          & (points.imag >= self.low) & (points.imag <= self.high), axis=1)
        return fit

    def keep(self, points: np.ndarray) -> None:
        """Place the paddle along points."""
        self.segments.append((points[0], points[-1]))
        self._add(points, self.radius)

    def keep_marker(self, centre: complex) -> None:
        """Keep later paddles a margin off the disc of a marker that may go at centre."""
        self._add(np.array([centre]), self.settings.marker_radius)

    def _add(self, points: np.ndarray, radius: float) -> None:
        stop = self.kept + len(points)
        self.points[self.kept:stop] = points
        self.reach[self.kept:stop] = self.radius + radius
        self.kept = stop

    def forget(self, paddles: int, kept: int) -> None:
        """Drop everything placed after there were `paddles` paddles and `kept` points."""
        del self.segments[paddles:]
        self.kept = kept

    def turn_candidates(self, joint: complex, theta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidate next paddles from joint after a paddle at angle theta: their points (K, P),
        angles and weights (cos^2(continuity * turn))."""
        shift = self.rng.random() * self.stratum
        x = self.strata + shift
        points = joint + cmath.exp(1j * (theta + shift / self.settings.continuity)) * self.fan
        return points, theta + x / self.settings.continuity, np.square(np.cos(x))

    def pick(self, weights: np.ndarray) -> int:
        """An index drawn with probability proportional to weights (not all zero)."""
        total = np.cumsum(weights)
        return int(np.searchsorted(total, self.rng.random() * total[-1], side="right"))


@dataclass
class _Paddle:
    """A placed paddle of a contour, with what the sketch held before it (to take it back)."""

    theta: float
    end: complex
    joint: complex  # where the next paddle leaves from
    paddles_before: int
    kept_before: int


class _Contour:
    """One contour, grown paddle by paddle from its first end; the newest paddles can be taken back."""

    def __init__(self, sketch: _Sketch, points: np.ndarray, theta: float):
        """Start the contour with the paddle along points, at angle theta."""
        self.sketch = sketch
        self.first_end = complex(points[0])
        self.paddles: list[_Paddle] = []
        self._place(self.first_end - sketch.margin * cmath.exp(1j * theta), points, theta)

    @property
    def last_end(self) -> complex:
        return self.paddles[-1].end

    def segments(self) -> np.ndarray:
        """The contour's paddles, (n, 2 ends)."""
        return np.array(self.sketch.segments[self.paddles[0].paddles_before:][:len(self.paddles)])

    def _place(self, joint: complex, points: np.ndarray, theta: float) -> None:
        sketch = self.sketch
        next_joint = joint + sketch.step * cmath.exp(1j * theta)
        self.paddles.append(_Paddle(theta, complex(points[-1]), next_joint, len(sketch.segments), sketch.kept))
        sketch.keep(points)

    def grow(self, length: int, retakes: int, last_end_ok: Callable[[np.ndarray], np.ndarray] | None = None) -> bool:
        """Extend to `length` paddles, each turned from the last; the last paddle's end must pass
        last_end_ok. At a dead end (no turn fits) the newest paddle is taken back and redrawn, up to
        `retakes` times in all. False if that was not enough (the caller drops the contour)."""
        sketch = self.sketch
        while len(self.paddles) < length:
            last = self.paddles[-1]
            points, theta, weights = sketch.turn_candidates(last.joint, last.theta)
            weights = weights * sketch.fits(points, joint=last.joint)
            if last_end_ok is not None and len(self.paddles) == length - 1:
                weights = weights * last_end_ok(points[:, -1])
            if weights.any():
                k = sketch.pick(weights)
                self._place(last.joint, points[k], float(theta[k]))
            elif retakes and len(self.paddles) > 1:
                retakes -= 1
                sketch.forget(last.paddles_before, last.kept_before)
                self.paddles.pop()
            else:
                return False
        return True


def _first_fit(sketch: _Sketch, first_ends: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, float] | None:
    """The first candidate first paddle (starting at first_ends[k], angle theta[k]) that fits, as
    its points and angle, or None."""
    points = first_ends[:, None] + np.exp(1j * theta)[:, None] * sketch.along
    fit = np.flatnonzero(sketch.fits(points))
    return (points[fit[0]], float(theta[fit[0]])) if len(fit) else None


def _main_pair(sketch: _Sketch, contour_length: int) -> tuple[_Contour, _Contour] | None:
    """Try to draw the two main contours and keep room for markers on their four ends; None (and
    nothing kept) when they do not fit.

    As in Linsley's generator, the first contour starts in the middle of the image (two seed
    distances off each border, which leaves room for its first paddle) and the second exactly
    seed_distance from it. Markers go on a first end and a last end, of one contour or of both, so
    all four such pairs are kept seed_distance apart; and no marker may touch the other contour
    (which would join the two): paddles keep off the first contour's end discs, and the second
    contour's ends keep off the first contour. A first contour gets _SECOND_TRIES second ones.
    """
    settings, rng = sketch.settings, sketch.rng
    apart = settings.seed_distance
    touch = settings.marker_radius + sketch.radius  # least distance of an end from another contour

    def far(points: np.ndarray, *ends: complex) -> np.ndarray:
        return np.all([np.abs(points - end) >= apart for end in ends], axis=0)

    middle = min(2 * apart, (sketch.low + sketch.high) / 2)
    x, y = rng.uniform(middle, sketch.low + sketch.high - middle, size=2)
    theta = rng.uniform(-np.pi, np.pi)
    first = _Contour(sketch, complex(x, y) + cmath.exp(1j * theta) * sketch.along, theta)
    if first.grow(contour_length, 2 * contour_length, lambda ends: far(ends, first.first_end)):
        sketch.keep_marker(first.first_end)
        sketch.keep_marker(first.last_end)
        body, paddles, kept = first.segments(), len(sketch.segments), sketch.kept

        def off_first(points: np.ndarray) -> np.ndarray:
            return _distances(points, body) >= touch

        for _ in range(_SECOND_TRIES):
            away, theta = rng.uniform(-np.pi, np.pi, size=(2, _SEED_CANDIDATES))
            seeds = first.first_end + apart * np.exp(1j * away)
            ok = far(seeds, first.last_end) & off_first(seeds)
            start = _first_fit(sketch, seeds[ok], theta[ok])
            if start is None:
                continue
            second = _Contour(sketch, *start)
            if second.grow(contour_length, 2 * contour_length,
                           lambda ends: far(ends, first.first_end, second.first_end) & off_first(ends)):
                sketch.keep_marker(second.first_end)
                sketch.keep_marker(second.last_end)
                return first, second
            sketch.forget(paddles, kept)
    sketch.forget(0, 0)
    return None


def _distractor(sketch: _Sketch, length: int) -> None:
    """Draw a distractor contour anywhere it fits, or none after a few tries. As in Linsley's
    generator, a dead end drops the distractor (no paddle is redrawn) and a new one is seeded."""
    rng = sketch.rng
    for _ in range(_DISTRACTOR_TRIES):
        x, y = rng.uniform(sketch.low, sketch.high, size=(2, _SEED_CANDIDATES))
        first = _first_fit(sketch, x + 1j * y, rng.uniform(-np.pi, np.pi, size=_SEED_CANDIDATES))
        if first is None:
            continue
        paddles, kept = len(sketch.segments), sketch.kept
        if _Contour(sketch, *first).grow(length, retakes=0):
            return
        sketch.forget(paddles, kept)


def _stamp(canvas: np.ndarray, start: np.ndarray, end: np.ndarray, radius: float) -> None:
    """Light the pixels of canvas whose centres lie within radius of a segment start[k] -> end[k]
    (complex x + iy in pixels of canvas; start == end stamps a disc), all at once, each in a window."""
    low = np.minimum(start.real, end.real) - radius, np.minimum(start.imag, end.imag) - radius
    span = int(np.ceil(max(np.abs((end - start).real).max(), np.abs((end - start).imag).max()) + 2 * radius)) + 2
    cols = np.floor(low[0]).astype(int)[:, None, None] + np.arange(span)[None, None, :]  # (n, 1, span)
    rows = np.floor(low[1]).astype(int)[:, None, None] + np.arange(span)[None, :, None]  # (n, span, 1)
    centre = (cols + 0.5) + 1j * (rows + 0.5) - start[:, None, None]  # pixel centres from each start
    along = (end - start)[:, None, None]
    t = np.clip((centre * along.conj()).real / np.maximum(np.square(np.abs(along)), 1e-12), 0.0, 1.0)
    size = canvas.shape[0]
    lit = (np.abs(centre - t * along) <= radius) & (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    rows, cols = np.broadcast_arrays(rows, cols)
    canvas[rows[lit], cols[lit]] = True


def _box(canvas: np.ndarray, scale: int) -> np.ndarray:
    """Area-average scale x scale blocks: the anti-aliasing downsample."""
    size = canvas.shape[0] // scale
    return canvas.reshape(size, scale, size, scale).mean(axis=(1, 3))


def _render(segments: np.ndarray, markers: np.ndarray, settings: Settings, resolution: int) -> np.ndarray:
    """uint8 image: light strokes (the paddles) and white discs (the markers) on black.

    Strokes are drawn at antialias_scale and averaged down; Linsley's contrast (snake_contrast x
    paddle_contrast) then scales the stroke and clips at white, so a thin stroke at 32x32 (half a
    pixel) still comes out light, as in LRA's images.
    """
    scale = settings.antialias_scale
    strokes = np.zeros((resolution * scale, resolution * scale), dtype=bool)
    _stamp(strokes, segments[:, 0] * scale, segments[:, 1] * scale, settings.paddle_thickness * scale / 2)
    discs = np.zeros_like(strokes)
    _stamp(discs, markers * scale, markers * scale, settings.marker_radius * scale)
    ink = np.minimum(_box(strokes, scale) * (settings.snake_contrast * settings.paddle_contrast), 1.0)
    return np.rint(np.maximum(ink, _box(discs, scale)) * 255).astype(np.uint8)


def _settings(resolution: int, difficulty: str) -> Settings:
    """The settings of a resolution; LRAError names a bad resolution or difficulty."""
    if resolution not in SETTINGS:
        raise LRAError(f"resolution must be one of {', '.join(map(str, RESOLUTIONS))}, got {resolution}")
    if difficulty not in DIFFICULTIES:
        raise LRAError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    return SETTINGS[resolution]


def draw(rng: np.random.Generator, resolution: int, difficulty: str, connected: bool) -> np.ndarray:
    """One (resolution, resolution) uint8 image; its markers are joined by a contour iff connected.

    Everything but the marker placement is drawn before `connected` is used, so one generator
    state gives the same contours for both labels.
    """
    settings = _settings(resolution, difficulty)
    contour_length, distractor_length, distractors = contour_shape(resolution, difficulty)
    sketch = _Sketch(rng, settings, resolution, capacity=2 * contour_length + distractors * distractor_length)
    for _ in range(_MAIN_TRIES):
        pair = _main_pair(sketch, contour_length)
        if pair is not None:
            break
    else:
        raise RuntimeError(f"no room for two contours of {contour_length} paddles at {resolution}x{resolution}")
    for _ in range(distractors):
        _distractor(sketch, distractor_length)
    marked, other = pair if rng.integers(2) == 0 else pair[::-1]
    markers = np.array([marked.first_end, (marked if connected else other).last_end])
    return _render(np.array(sketch.segments), markers, settings, resolution)


def _check(*, resolution: int, difficulty: str, count: int, seed: int, workers: int | None) -> None:
    """LRAError naming the first bad argument of write_release."""
    _settings(resolution, difficulty)
    if count < 2:
        raise LRAError(f"count must be >= 2 (one image of each label), got {count}")
    if seed < 0:
        raise LRAError(f"seed must be >= 0, got {seed}")
    if workers is not None and workers < 1:
        raise LRAError(f"workers must be >= 1, got {workers}")


def _label_order(seed: int, count: int) -> np.ndarray:
    """The labels of images 0..count-1: count // 2 ones (connected), the rest zeros, in a seeded order."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_LABEL_STREAM,)))
    return rng.permutation(np.arange(count) < count // 2).astype(np.int64)


def _image_path(index: int) -> str:
    """Path of image `index` under the difficulty folder, as in the LRA release."""
    return f"imgs/{index // IMAGES_PER_BATCH}/sample_{index % IMAGES_PER_BATCH}.png"


def _draw_chunk(job: tuple[Path, int, str, int, int, np.ndarray]) -> int:
    """Draw and write images first..first+len(labels)-1 into folder; returns how many.

    Image j draws from its own generator, default_rng([seed, j]): the bytes do not depend on
    how the images are shared among processes.
    """
    folder, resolution, difficulty, seed, first, labels = job
    for index, label in enumerate(labels, start=first):
        image = draw(np.random.default_rng([seed, index]), resolution, difficulty, connected=bool(label))
        Image.fromarray(image).save(folder / _image_path(index), format="PNG")  # no timestamp chunk
    return len(labels)


def _draw_all(folder: Path, *, resolution: int, difficulty: str, seed: int, labels: np.ndarray,
              workers: int, progress: bool) -> None:
    """Write every image into folder/imgs/<batch>/, in chunks over a pool of `workers` processes."""
    for batch in range((len(labels) - 1) // IMAGES_PER_BATCH + 1):
        (folder / "imgs" / str(batch)).mkdir(parents=True)
    # chunks small enough to keep every worker busy to the end and the progress bar moving
    chunk = max(1, min(200, len(labels) // (4 * workers)))
    jobs = [(folder, resolution, difficulty, seed, first, labels[first:first + chunk])
            for first in range(0, len(labels), chunk)]
    with tqdm(total=len(labels), desc=f"Pathfinder{resolution} {difficulty}", unit="image",
              disable=not progress) as bar:
        if workers == 1:
            for job in jobs:
                bar.update(_draw_chunk(job))
            return
        with Pool(min(workers, len(jobs)), initializer=_leave_interrupts_to_parent) as pool:
            for done in pool.imap_unordered(_draw_chunk, jobs):
                bar.update(done)


def _leave_interrupts_to_parent() -> None:
    """In a drawing process: ignore Ctrl-C, which the terminal sends to every process of the command. The
    parent stops the pool and removes what was drawn; a worker would print a traceback of its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _write_metadata(folder: Path, *, resolution: int, difficulty: str, labels: np.ndarray) -> None:
    """metadata/<batch>.npy: despite the suffix a text file, one line per image of the batch:
    `imgs/<batch> sample_<i>.png <i> <label> <contour_length> <paddle_length> <num_distractor_snakes>`
    (LRA's reader takes fields 0, 1 and 3)."""
    contour_length, _, distractors = contour_shape(resolution, difficulty)
    tail = f"{contour_length} {SETTINGS[resolution].paddle_length} {distractors}"
    (folder / "metadata").mkdir()
    for start in range(0, len(labels), IMAGES_PER_BATCH):
        batch = start // IMAGES_PER_BATCH
        lines = [f"imgs/{batch} sample_{i}.png {i} {label} {tail}\n"
                 for i, label in enumerate(labels[start:start + IMAGES_PER_BATCH].tolist())]
        (folder / "metadata" / f"{batch}.npy").write_text("".join(lines))


def _move_into_place(temp: Path, final: Path) -> None:
    """Rename the complete temp folder to final, replacing an existing final only now."""
    if not final.exists():
        os.replace(temp, final)
        return
    old = final.with_name(temporary_name(final.name, "old"))
    os.replace(final, old)
    try:
        os.replace(temp, final)
    except BaseException:
        os.replace(old, final)
        raise
    shutil.rmtree(old)


def write_release(out: Path, *, resolution: int, difficulty: str, count: int, seed: int = 0,
                  workers: int | None = None, progress: bool = True) -> Path:
    """Writes out/<difficulty dir>/imgs/<batch>/sample_<i>.png and out/<difficulty dir>/metadata/<batch>.npy,
    and out/<difficulty dir>/generator.json (the settings: resolution, difficulty, count, seed), and
    returns out/<difficulty dir>.

    Everything is written into a hidden sibling folder first and renamed into place when complete
    (an existing folder is replaced only then): a failure leaves no partial release, and the
    temporary folder is removed, as are those a killed generation left in `out`. The same arguments
    give the same bytes, whatever `workers`.
    """
    _check(resolution=resolution, difficulty=difficulty, count=count, seed=seed, workers=workers)
    out = Path(out)
    name = DIFFICULTIES[difficulty][0]
    final, temp = out / name, out / temporary_name(name)
    labels = _label_order(seed, count)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    shutil.rmtree(temp, ignore_errors=True)  # left by a killed run that had this process id
    try:
        _draw_all(temp, resolution=resolution, difficulty=difficulty, seed=seed, labels=labels,
                  workers=workers or os.cpu_count() or 1, progress=progress)
        _write_metadata(temp, resolution=resolution, difficulty=difficulty, labels=labels)
        settings = {"resolution": resolution, "difficulty": difficulty, "count": count, "seed": seed}
        (temp / SETTINGS_FILE).write_text(json.dumps(settings, sort_keys=True, indent=2) + "\n")
        _move_into_place(temp, final)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return final
