"""The hooks a plugin implements. Each receives `register(name, factory)`; calling it adds one component.

A plugin module implements any subset of these with `@harness.hookimpl` and is listed under the `harness`
entry-point group of its distribution.
"""

import pluggy

hookspec = pluggy.HookspecMarker("harness")
hookimpl = pluggy.HookimplMarker("harness")


@hookspec
def register_datasets(register):
    """Register real video datasets: `register("name", DatasetSubclass)`.

    The class has a pydantic `Config` and `load(split, ctx) -> VideoSet` for splits train, val and test.
    """


@hookspec
def register_encoders(register):
    """Register frame encoders (image or latent space): `register("name", EncoderSubclass)`.

    The class sets `space`, may implement `fit/save_state/load_state`, and implements `encode`/`decode`.
    """


@hookspec
def register_generators(register):
    """Register video generators: `register("name", GeneratorSubclass)`.

    `fit(data, ctx)` may train on the train/val latents; `sample(conditions, ctx) -> SampleSet` returns one video
    per condition with the shape of the training latents and a provenance record per sample.
    """


@hookspec
def register_reid_filters(register):
    """Register re-identification models: `register("name", ReIdFilterSubclass)`.

    The class implements `fit(train, val, ctx)`, `embed(videos, ctx, frames) -> [N, F, D]` and
    `head_parameters() -> (w, b)` of its `pred` head; the core scores all pairs with its `heads`, in chunks.
    """


@hookspec
def register_tasks(register):
    """Register downstream tasks: `register("name", TaskSubclass)` with `fit(train, val, ctx)` and
    `evaluate(test, ctx) -> metrics` (values with bootstrap intervals), evaluated on real test data.
    """


@hookspec
def register_metrics(register):
    """Register extra metrics: `register("name", callable)`. Built-in metrics are core functions;
    this hook is for additions computed over features and scores.
    """
