"""The privacy tests the peers run, as row metrics computed in the re-ID space and in the clip feature space: distance
to closest record (synthcity, SDMetrics), authenticity with α-precision and β-recall (Alaa et al. 2022, synthcity,
dgm-eval), the C_T data-copying test (Meehan et al. 2020, dgm-eval) and a DOMIAS-style membership inference attack
(van Breugel et al. 2023, synthcity). The statistics are in `harness_plugins.privacy_peers_stats`.

The real test videos, which no model of the run saw, are the held-out reference each test needs: the percentile a
sample must be closer than, C_T's third sample, and (split in two) the attacker's reference data and the
non-members of the membership attack.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field, PositiveInt

from harness import hookimpl
from harness.components import SPACES, ComponentConfig, Measured, RowFeatures, RowMetric
from harness.metrics.intervals import Estimate
from harness_plugins import privacy_peers_stats as stats


def measured(estimate: Estimate, features: RowFeatures) -> Measured:
    return Measured(estimate.value, *estimate.interval(features.boot))


def _enough_samples(features: RowFeatures) -> None:
    stats.need(len(features.samples), 2, "samples", "a privacy test of the row")


def _closest(features: RowFeatures) -> tuple[stats.Closest, stats.Closest]:
    """Nearest neighbours between the samples and the training videos, and between the held-out videos and the
    training videos (computed once per row and space)."""
    return features.once("closest-records", lambda: (stats.closest_records(features.samples, features.train),
                                                     stats.closest_records(features.test, features.train)))


def _own(features: RowFeatures) -> torch.Tensor:
    """Each training video's distance to its nearest other training video (once per row and space)."""
    return features.once("own-neighbour", lambda: stats.own_neighbour(features.train))


class PeerMetric(RowMetric):
    """A peer's test: computed in both feature spaces, shown in the Privacy (peers) tables."""

    spaces = SPACES
    group = "peers"


class HeldOutConfig(ComponentConfig):
    percentile: float = Field(5.0, gt=0, lt=100,
                              description="the real held-out videos' percentile a sample must fall below")


class CloserThanHeldOut(PeerMetric):
    """Samples closer to their nearest training video than 95 % of the real held-out videos are (distance to
    closest record, DCR; below the held-out videos' 5th percentile, `percentile`, resampled with the samples): 5 %
    for a generator that never saw the training videos, 100 % for copies."""

    label = "DCR closer %"
    direction = "↓"
    digits = 1
    Config = HeldOutConfig

    def values(self, samples: stats.Closest, held_out: stats.Closest) -> tuple[np.ndarray, np.ndarray]:
        return samples.d1, held_out.d1

    def compute(self, features: RowFeatures) -> Measured:
        _enough_samples(features)
        own, held_out = self.values(*_closest(features))
        return measured(stats.below_held_out(own, held_out, self.config.percentile, features.boot), features)

    def null(self) -> float:
        return self.config.percentile


class RatioBelowHeldOut(CloserThanHeldOut):
    """Samples whose nearest-neighbour distance ratio (closest over second-closest training video, NNDR) is below
    that of 95 % of the real held-out videos: a sample much closer to one training video than to any other stands
    out as that video's."""

    label = "NNDR below %"

    def values(self, samples: stats.Closest, held_out: stats.Closest) -> tuple[np.ndarray, np.ndarray]:
        return stats.ratio(samples.d1, samples.d2), stats.ratio(held_out.d1, held_out.d2)


class MedianDistance(PeerMetric):
    """The samples' median distance to their closest training video (DCR), resampling the samples: 0 for copies; a
    sample far from every real video (noise) is far too, which the fidelity tables show."""

    label = "median DCR"
    direction = "↑"

    def compute(self, features: RowFeatures) -> Measured:
        _enough_samples(features)
        return measured(stats.resampled(_closest(features)[0].d1, features.boot, np.median, 10), features)


class Authenticity(PeerMetric):
    """Share of samples farther from their nearest training video than that video is from its own nearest
    training neighbour (Alaa et al. 2022), resampling the samples: 0 for copies."""

    label = "authenticity"
    direction = "↑"

    def compute(self, features: RowFeatures) -> Measured:
        _enough_samples(features)
        flags = stats.authentic(_closest(features)[0], _own(features))
        return measured(stats.resampled(flags, features.boot, np.mean, 15), features)


class AlphaPrecision(PeerMetric):
    """Δ α-precision (Alaa et al. 2022): 1 minus twice the area between α and the share of samples inside the
    α-quantile ball of the training videos' features, over 30 levels α (1: the samples fill the real support as
    the real videos do); resampling the samples."""

    label = "α-precision"
    direction = "↑"
    group = "fidelity"

    def compute(self, features: RowFeatures) -> Measured:
        _enough_samples(features)
        return measured(stats.alpha_precision(features.samples, features.train, features.boot), features)


class BetaRecall(PeerMetric):
    """Δ β-recall (Alaa et al. 2022): the same area for the share of training videos whose nearest sample is within
    their own nearest-neighbour distance and inside the β-quantile ball of those samples; resampling the training
    videos."""

    label = "β-recall"
    direction = "↑"
    group = "fidelity"

    def compute(self, features: RowFeatures) -> Measured:
        _enough_samples(features)
        return measured(stats.beta_recall(features.samples, _closest(features)[0], _own(features), features.boot),
                        features)


class DataCopyingConfig(ComponentConfig):
    cells: PositiveInt = Field(5, description="k-means cells the training videos are partitioned into")
    min_cell_samples: PositiveInt = Field(20, description="a cell takes part when it holds more samples than this")


def _data_copying(features: RowFeatures, config: DataCopyingConfig) -> stats.DataCopying:
    _enough_samples(features)
    return features.once(f"data-copying/{config.cells}/{config.min_cell_samples}", lambda: stats.data_copying(
        features.samples, features.train, features.test, config.cells, config.min_cell_samples, features.boot))


class DataCopying(PeerMetric):
    """Meehan et al.'s C_T: per k-means cell of the training videos, the Mann-Whitney U of the samples' distances
    to the training videos against the real held-out videos', z-scored, averaged with the held-out videos' share
    of each cell as weight; resampling samples and held-out videos. About 0 for a generator that never saw the
    training videos, strongly negative for copying, positive for samples farther than real videos."""

    label = "C_T"
    direction = "↑"
    digits = 2
    Config = DataCopyingConfig

    def compute(self, features: RowFeatures) -> Measured:
        return measured(_data_copying(features, self.config).ct, features)

    def null(self) -> float:
        return 0.0


class CopyingCells(PeerMetric):
    """How many of the data-copying test's cells copy: cells whose own z-score is below -1.96, out of the cells
    holding enough samples."""

    label = "C_T cells copying"
    direction = "↓"
    digits = 0
    Config = DataCopyingConfig

    def compute(self, features: RowFeatures) -> Measured:
        result = _data_copying(features, self.config)
        return Measured(float(result.cells_copying))


class MembershipConfig(ComponentConfig):
    dims: PositiveInt = Field(8, description="principal components of the attacker's reference videos the densities "
                                             "are fitted in")


class MembershipInference(PeerMetric):
    """AUC of a DOMIAS-style attack telling the real training videos from real held-out ones by the density ratio
    p_samples / p_reference (van Breugel et al. 2023), the row's samples as the attacker's synthetic data and half of
    the held-out videos as its reference data, the other half as non-members; resampling members and non-members.
    0.5: the samples reveal nothing about who was in the training set."""

    label = "membership AUC"
    direction = "↓"
    Config = MembershipConfig

    def compute(self, features: RowFeatures) -> Measured:
        _enough_samples(features)
        stats.need(len(features.test), 4, "real held-out videos", "the membership attack")
        reference, others = features.test[0::2], features.test[1::2]
        queries = torch.cat([features.train, others])
        scores = stats.membership_scores(features.samples, reference, queries, self.config.dims)
        members, non_members = scores[:len(features.train)], scores[len(features.train):]
        return measured(stats.auc_estimate(members, non_members, features.boot), features)

    def null(self) -> float:
        return 0.5


@hookimpl
def register_metrics(register):
    register("dcr", CloserThanHeldOut)
    register("nndr", RatioBelowHeldOut)
    register("dcr-median", MedianDistance)
    register("authenticity", Authenticity)
    register("alpha-precision", AlphaPrecision)
    register("beta-recall", BetaRecall)
    register("data-copying", DataCopying)
    register("data-copying-cells", CopyingCells)
    register("membership-inference", MembershipInference)
