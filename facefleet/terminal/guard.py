"""The impostor-probe guard of on-device adaptation (issue 18): updates that let impostors closer are undone.

The probe is held out from the update: stored middle features of enrolled users that the update never uses
as negatives (``split_enrolled``), half of the recent accepted captures (``split_captures``: each is an
impostor for every user but the one it was accepted as, and unlike the enrolled images it carries the site's
current drift: lighting, colour cast, camera), plus synthetic negatives (smooth noise through the frozen
lower part, from their own seed). Before an adapted upper part replaces the current one, both are scored
against the enrolled templates as the candidate would re-extract them: impostor pairs are (user ``u``'s
templates, a probe feature of anyone but ``u``), scored like a verification (best template). The candidate
passes only if the probe's false-accept rate at the card's threshold does not rise, its highest impostor
score stays ``margin`` below the threshold (or below the shipped model's own highest score where that was
closer), the update's own accepted inputs come closer to their templates (else it only pushes everyone
away), and the enrolled users still recognise their own held-out images (leave-one-out) as well as before.
Pure tensors: no files, no database."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class GuardConfig:
    enabled: bool = True
    # The highest probe impostor score must stay this far below the card's threshold.
    margin: float = 0.1
    synthetic_probes: int = 48
    # Recent accepted captures kept per model (their middle features); half are held out into the probe,
    # the other half serve the update as negatives. 0: the probe holds enrolled images and noise only.
    recent_captures: int = 64
    # True: the probe holds every image and capture of half of the enrolled users (``probe_users``) and the
    # update's negatives come from the other half only; False: each user's images and captures alternate.
    split_by_user: bool = True
    # Near misses (probe impostor pairs at or above threshold - margin) may not become more frequent.
    near_misses: bool = True
    # The mean of the highest ``tail_fraction`` of probe impostor scores may not rise (impostors creeping
    # toward the door while still under it); 0 turns the check off.
    tail_fraction: float = 0.1
    # Leave-one-out genuine accept rate of the enrolled images may not fall by more than this.
    max_genuine_drop: float = 0.0
    probe_seed: int = 7919


@dataclass(frozen=True)
class ProbeReport:
    far: float  # fraction of impostor pairs at or above the threshold
    max_impostor: float
    genuine_accept: float  # leave-one-out, enrolled images (1.0 when no user has two images)
    impostor_pairs: int
    positives: float | None = None  # mean score of the update's own accepted inputs (what it is for)
    near_far: float = 0.0  # fraction of impostor pairs at or above threshold - margin (near misses)
    tail_mean: float = -1.0  # mean of the highest ``tail_fraction`` of impostor scores

    def as_dict(self) -> dict[str, float | int]:
        return {
            "far": round(self.far, 6),
            "max_impostor": round(self.max_impostor, 6),
            "genuine_accept": round(self.genuine_accept, 6),
            "impostor_pairs": self.impostor_pairs,
        }


@dataclass(frozen=True)
class GuardDecision:
    accepted: bool
    reason: str
    candidate: ProbeReport
    current: ProbeReport


def probe_users(users: Iterable[str]) -> set[str]:
    """Half of the enrolled users (every other one in the order of their names' SHA-256, so the split does
    not follow enrollment order) whose features only ever serve the probe, never the update's negatives:
    the probe's impostors are then people the update never pushed away, like a stranger at the door."""
    ranked = sorted(set(users), key=lambda user: hashlib.sha256(user.encode()).hexdigest())
    return set(ranked[::2])


def split_enrolled(
    sample_ids: Sequence[int], users: Sequence[str], *, by_user: bool = False
) -> tuple[list[int], list[int]]:
    """Indices of the probe's and the update's enrolled features. ``by_user``: all images of the
    ``probe_users`` go to the probe, the others' to the update. Otherwise per user, images in enrollment
    order alternate, starting with the probe (so a user with one image is only in the probe)."""
    if by_user:
        held = probe_users(users)
        return (
            [i for i, user in enumerate(users) if user in held],
            [i for i, user in enumerate(users) if user not in held],
        )
    rank: dict[str, int] = {}
    probe: list[int] = []
    update: list[int] = []
    for index in sorted(range(len(sample_ids)), key=lambda i: sample_ids[i]):
        user = users[index]
        (probe if rank.get(user, 0) % 2 == 0 else update).append(index)
        rank[user] = rank.get(user, 0) + 1
    return sorted(probe), sorted(update)


def split_captures(
    capture_ids: Sequence[int], capture_users: Sequence[str] | None = None, held: set[str] | None = None
) -> tuple[list[int], list[int]]:
    """Indices of the probe's and the update's captures. With ``held`` (the probe users): by the user the
    capture was accepted as. Otherwise by the capture's id (even: probe), so a capture stays on its side
    while newer ones arrive and older ones leave the ring."""
    if held is not None and capture_users is not None:
        probe = [i for i, user in enumerate(capture_users) if user in held]
        return probe, [i for i, user in enumerate(capture_users) if user not in held]
    probe = [i for i, capture_id in enumerate(capture_ids) if capture_id % 2 == 0]
    update = [i for i, capture_id in enumerate(capture_ids) if capture_id % 2 == 1]
    return probe, update


def smooth_noise(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Low-frequency noise images in [-1, 1]: coarse random grids upsampled (images are mostly low
    frequency, so these land nearer the data than white noise)."""
    cells = int(torch.randint(3, 9, (1,), generator=generator))
    coarse = torch.rand((count, 3, cells, cells), generator=generator) * 2 - 1
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return (smooth + 0.1 * torch.randn(smooth.shape, generator=generator)).clamp(-1, 1)


@dataclass
class ImpostorProbe:
    """Everything the guard scores: enrolled middles (all of them become templates), which of them are
    held out as impostors, and synthetic negatives' middles (impostors for every user)."""

    template_middles: torch.Tensor  # [N, ...] every stored middle feature
    template_users: list[str]
    probe_indices: list[int]  # rows of template_middles held out of the update
    synthetic_middles: torch.Tensor  # [S, ...]
    capture_middles: torch.Tensor | None = None  # [C, ...] held-out recent captures
    capture_users: list[str] | None = None  # whom each was accepted as (an impostor for everyone else)
    margin: float = 0.1  # near misses: impostor pairs at or above threshold - margin (GuardConfig.margin)
    tail_fraction: float = 0.1  # the closest share of impostors whose mean is reported (GuardConfig)

    @classmethod
    def build(
        cls,
        template_middles: torch.Tensor,
        template_users: list[str],
        sample_ids: list[int],
        lower: Callable[[torch.Tensor], torch.Tensor],
        input_size: int,
        config: GuardConfig,
        captures: tuple[torch.Tensor, list[str]] | None = None,
    ) -> ImpostorProbe:
        """``captures``: the held-out recent captures (middles, the users they were accepted as)."""
        probe, _update = split_enrolled(sample_ids, template_users, by_user=config.split_by_user)
        generator = torch.Generator().manual_seed(config.probe_seed)
        parts = [
            smooth_noise(min(8, config.synthetic_probes - done), input_size, generator)
            for done in range(0, config.synthetic_probes, 8)
        ]  # several low-frequency scales
        with torch.no_grad():
            synthetic = lower(torch.cat(parts)) if parts else template_middles[:0]
        held = captures if captures is not None and len(captures[1]) else (None, None)
        return cls(
            template_middles,
            list(template_users),
            probe,
            synthetic,
            held[0],
            held[1],
            margin=config.margin,
            tail_fraction=config.tail_fraction,
        )

    @torch.no_grad()
    def evaluate(self, upper: Callable[[torch.Tensor], torch.Tensor], threshold: float) -> ProbeReport:
        """Score the probe under ``upper`` (the part that maps middle features to embeddings)."""
        n_templates = len(self.template_users)
        n_synthetic = len(self.synthetic_middles)
        captured = [] if self.capture_middles is None else list(self.capture_users or [])
        parts = [self.template_middles, self.synthetic_middles]
        if captured:
            parts.append(self.capture_middles)  # type: ignore[arg-type]
        embeddings = F.normalize(upper(torch.cat(parts)), dim=-1)
        templates = embeddings[:n_templates]
        users = sorted(set(self.template_users))
        owner = torch.tensor([users.index(u) for u in self.template_users])
        scores = templates @ embeddings.T  # [templates, every probe candidate]
        impostor_scores: list[torch.Tensor] = []
        genuine_hits = genuine_total = 0
        synthetic_columns = list(range(n_templates, n_templates + n_synthetic))
        for u, user in enumerate(users):
            mine = owner == u
            user_scores = scores[mine]  # [u's templates, candidates]
            held_out = [i for i in self.probe_indices if int(owner[i]) != u]
            others_captures = [
                n_templates + n_synthetic + k for k, whom in enumerate(captured) if whom != user
            ]
            columns = held_out + synthetic_columns + others_captures
            if columns:
                impostor_scores.append(user_scores[:, columns].max(dim=0).values)
            rows = mine.nonzero().flatten().tolist()
            if len(rows) >= 2:  # each enrolled image against the user's other templates
                own = scores[rows][:, rows].clone()
                own.fill_diagonal_(-2.0)
                best = own.max(dim=0).values
                genuine_hits += int((best >= threshold).sum())
                genuine_total += len(rows)
        impostors = torch.cat(impostor_scores) if impostor_scores else torch.zeros(0)
        tail = impostors.sort(descending=True).values[: max(1, round(self.tail_fraction * len(impostors)))]
        return ProbeReport(
            far=float((impostors >= threshold).float().mean()) if len(impostors) else 0.0,
            max_impostor=float(impostors.max()) if len(impostors) else -1.0,
            genuine_accept=genuine_hits / genuine_total if genuine_total else 1.0,
            impostor_pairs=len(impostors),
            near_far=float((impostors >= threshold - self.margin).float().mean()) if len(impostors) else 0.0,
            tail_mean=float(tail.mean()) if len(impostors) else -1.0,
        )


def judge(
    current: ProbeReport,
    candidate: ProbeReport,
    threshold: float,
    config: GuardConfig,
    shipped: ProbeReport | None = None,
) -> GuardDecision:
    """Commit only what does not let impostors closer (see the module docstring).

    The highest probe impostor score must stay under ``threshold - margin``, or under the shipped model's
    own highest score where that was already closer (adaptation never brings the closest impostor nearer
    than the platform shipped it).
    """
    if not config.enabled:
        return GuardDecision(True, "guard off", candidate, current)
    if candidate.far > current.far:
        reason = f"probe FAR would rise {current.far:.4f} -> {candidate.far:.4f}"
        return GuardDecision(False, reason, candidate, current)
    ceiling = max(threshold - config.margin, (shipped or current).max_impostor)
    if candidate.max_impostor >= ceiling:
        reason = (
            f"highest probe impostor score would reach {candidate.max_impostor:.3f} "
            f"(ceiling {ceiling:.3f}: threshold {threshold:.3f} - margin {config.margin:.3f}, or shipped)"
        )
        return GuardDecision(False, reason, candidate, current)
    if config.near_misses and candidate.near_far > current.near_far:
        reason = (
            f"probe near misses (>= threshold - margin) would rise {current.near_far:.4f} -> "
            f"{candidate.near_far:.4f}"
        )
        return GuardDecision(False, reason, candidate, current)
    if config.tail_fraction > 0 and candidate.tail_mean > current.tail_mean:
        reason = (
            f"the closest {config.tail_fraction:.0%} of probe impostors would come closer "
            f"({current.tail_mean:.3f} -> {candidate.tail_mean:.3f})"
        )
        return GuardDecision(False, reason, candidate, current)
    if (
        candidate.positives is not None
        and current.positives is not None
        and candidate.positives <= current.positives
    ):
        reason = (
            f"the accepted inputs would not come closer to their templates "
            f"({current.positives:.3f} -> {candidate.positives:.3f})"
        )
        return GuardDecision(False, reason, candidate, current)
    if candidate.genuine_accept < current.genuine_accept - config.max_genuine_drop:
        reason = (
            f"enrolled images' leave-one-out accept rate would fall "
            f"{current.genuine_accept:.3f} -> {candidate.genuine_accept:.3f}"
        )
        return GuardDecision(False, reason, candidate, current)
    return GuardDecision(True, "passed", candidate, current)
