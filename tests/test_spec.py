import textwrap

import pytest

from harness.errors import UserError
from harness.spec import SpecErrors, validate_spec
from tests.conftest import TINY, run_cli, tiny_spec


def write(tmp_path, text: str):
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(text))
    return path


BASE = """\
spec_version: 1
name: t
dataset: {plugin: echo-phantom, args: {n_train: 4}}
encoder: {plugin: identity}
generators:
  - plugin: copy
    args: {noise_std: 0.1}
"""


def test_valid_spec_resolves_defaults_and_hashes(tmp_path, registry):
    resolved = validate_spec(write(tmp_path, BASE), registry)
    data = resolved.resolved()
    assert data["dataset"]["args"]["n_train"] == 4 and data["dataset"]["args"]["view"] == "a4c"
    assert data["generators"][0]["n_samples"] == 64
    assert resolved.spec_hash == validate_spec(write(tmp_path, BASE), registry).spec_hash


def test_benchmark_hash_ignores_the_generator_list(tmp_path, registry):
    one = validate_spec(write(tmp_path, BASE), registry)
    two = validate_spec(write(tmp_path, BASE.replace("plugin: copy", "plugin: noise").replace(
        "{noise_std: 0.1}", "{}")), registry)
    seeded = validate_spec(write(tmp_path, BASE + "seed: 3\n"), registry)
    assert one.benchmark_hash == two.benchmark_hash and one.spec_hash != two.spec_hash
    assert seeded.benchmark_hash != one.benchmark_hash


def problems(path, registry):
    with pytest.raises(SpecErrors) as info:
        validate_spec(path, registry)
    return info.value.problems


def test_unknown_plugin_suggests_the_closest_and_gives_the_line(tmp_path, registry):
    [p] = problems(write(tmp_path, BASE.replace("plugin: copy", "plugin: cpoy")), registry)
    assert p.path == ("generators", 0, "plugin") and p.line == 6
    assert "Did you mean 'copy'?" in p.message


def test_extra_and_wrongly_typed_args_are_errors_with_lines(tmp_path, registry):
    text = BASE.replace("{noise_std: 0.1}", "{noise_std: lots, colour: red}")
    found = {p.path: p for p in problems(write(tmp_path, text), registry)}
    assert set(found) == {("generators", 0, "args", "noise_std"), ("generators", 0, "args", "colour")}
    assert all(p.line == 7 for p in found.values())
    assert "unknown key" in found[("generators", 0, "args", "colour")].message


def test_non_positive_sample_count_is_an_error(tmp_path, registry):
    [p] = problems(write(tmp_path, BASE + "    n_samples: 0\n"), registry)
    assert p.path == ("generators", 0, "n_samples") and p.line == 8


def test_malformed_yaml_names_file_and_line(tmp_path, registry):
    with pytest.raises(UserError, match=r"spec.yaml:2: malformed YAML \(mapping values are not allowed"):
        validate_spec(write(tmp_path, "spec_version: 1\nname: a: b\n"), registry)


def test_cli_validate_prints_every_error_and_exits_2(tmp_path):
    text = BASE.replace("plugin: copy", "plugin: cpoy").replace("plugin: identity", "plugin: identiy")
    done = run_cli("validate", str(write(tmp_path, text)))
    assert done.returncode == 2
    assert "spec.yaml:4: encoder.plugin" in done.stderr and "spec.yaml:6: generators.0.plugin" in done.stderr
    assert "Traceback" not in done.stderr
    ok = run_cli("validate", str(TINY))
    assert ok.returncode == 0 and "benchmark hash" in ok.stdout


@pytest.mark.parametrize("spec", ["tiny.yaml", "phantom.yaml", "phantom-paper.yaml", "phantom-robustness.yaml"])
def test_shipped_specs_are_valid(spec, registry):
    validate_spec(TINY.parent / spec, registry)


def test_generators_and_a_reid_study_do_not_mix(tmp_path, registry):
    spec = tiny_spec(tmp_path, reid_study={"variants": [{"name": "a"}]})
    with pytest.raises(SpecErrors, match="either `generators` or a `reid_study`"):
        validate_spec(spec, registry)


def test_a_spec_with_a_base_says_only_how_it_differs(tmp_path, registry):
    """Mappings merge key by key, lists and values replace the base's; the variant is its own benchmark."""
    write(tmp_path, BASE)
    variant = tmp_path / "variant.yaml"
    variant.write_text("base: spec.yaml\nname: v\ndataset: {args: {n_val: 3}}\ngenerators: [{plugin: noise}]\n")
    base, resolved = validate_spec(tmp_path / "spec.yaml", registry), validate_spec(variant, registry)
    args = resolved.resolved()["dataset"]["args"]
    assert (args["n_train"], args["n_val"], resolved.spec.dataset.plugin) == (4, 3, "echo-phantom")
    assert [g.plugin for g in resolved.spec.generators] == ["noise"]
    assert resolved.benchmark_hash != base.benchmark_hash
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\nname: l\n")
    with pytest.raises(UserError, match="leads back to itself"):
        validate_spec(loop, registry)
    missing = tmp_path / "missing.yaml"
    missing.write_text("base: nowhere.yaml\nname: m\n")
    with pytest.raises(UserError, match="nowhere.yaml: spec file not found"):
        validate_spec(missing, registry)
