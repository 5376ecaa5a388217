"""The hooks a plugin implements. Each receives `register(name, factory)`; calling it adds one component.

A plugin module implements any subset of these with `@harness.hookimpl` and is listed under the `harness`
entry-point group of its distribution. What each factory must do is documented once, on its base class in
`harness.components`; a hook implementation whose name is not below is a load error of its plugin.
"""

import pluggy

hookspec = pluggy.HookspecMarker("harness")
hookimpl = pluggy.HookimplMarker("harness")


@hookspec
def register_datasets(register):
    """Register real video datasets: `register("name", cls)` with `cls` a `harness.components.Dataset`."""


@hookspec
def register_encoders(register):
    """Register frame encoders (image or latent space): `cls` a `harness.components.Encoder`."""


@hookspec
def register_generators(register):
    """Register video generators: `cls` a `harness.components.Generator`."""


@hookspec
def register_reid_filters(register):
    """Register re-identification models: `cls` a `harness.components.ReIdFilter`."""


@hookspec
def register_tasks(register):
    """Register downstream tasks: `cls` a `harness.components.Task`."""


@hookspec
def register_feature_extractors(register):
    """Register clip feature extractors, the spaces fidelity is measured in (`fidelity.features` in a spec):
    `cls` a `harness.components.FeatureExtractor`."""


@hookspec
def register_metrics(register):
    """Register extra leaderboard columns computed per generator row: `cls` a `harness.components.RowMetric`.

    A spec lists the ones it wants under `metrics`.
    """


@hookspec
def register_commands(register):
    """Register `harness` subcommands: `register("words", cls)` with `cls` a `harness.components.Command`;
    `"data phantom"` becomes `harness data phantom`."""
