"""sdcpp.evaluate / sensitivity / budget quantization: the numbers they report are the numbers an independent
computation gives, and the budget quantizer meets its budget with no more error than the uniform type."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import sdcpp
from sdcpp.cli import main
from sdcpp.evaluation import metrics
from sdcpp.evaluation.budget import parse_bytes
from sdcpp.evaluation.groups import group_of, groups
from sdcpp.evaluation.sensitivity import sensitivity

PROMPT = "a lovely cat"
GEN = dict(steps=3, width=32, height=32, sampler="euler", guidance_scale=5.0)


@pytest.fixture(scope="module")
def sd1(fixtures_dir):
    return fixtures_dir / "sd1" / "diffusers"


@pytest.fixture(scope="module")
def report(sd1):
    """In child processes, as users run it: each configuration's peak memory is its own."""
    return sdcpp.evaluate(sd1, ["f16", "q8_0", "q4_0"], [PROMPT], [5], n_threads=1, progress=False, **GEN)


def test_reported_errors_equal_an_independent_computation(sd1, report):
    ref = sdcpp.Model(sd1, type="f32", n_threads=1, progress=False).generate(PROMPT, seed=5, progress=False, **GEN)
    q = sdcpp.Model(sd1, type="q8_0", n_threads=1, progress=False).generate(PROMPT, seed=5, progress=False, **GEN)
    mse = float(np.mean((q.arrays.astype(np.float64) - ref.arrays) ** 2))
    psnr = 10 * math.log10(1 / mse)
    rel = float(np.linalg.norm(q.latents.astype(np.float64) - ref.latents) / np.linalg.norm(ref.latents))
    row = report.row("q8_0")
    assert abs(row.psnr - psnr) <= 1e-6 and abs(row.latent_rel_l2 - rel) <= 1e-6
    from skimage.metrics import structural_similarity

    ssim = structural_similarity(q.arrays[0].astype(np.float64), ref.arrays[0].astype(np.float64), data_range=1.0,
                                 channel_axis=-1, win_size=7)
    assert abs(row.ssim - ssim) <= 1e-6


def test_reference_against_itself_and_bytes(sd1, report):
    ref = report.row("reference")
    assert ref.latent_rel_l2 == 0 and ref.te_rel_l2 == 0 and ref.unet_mean == 0 and ref.ssim == 1.0
    assert math.isinf(ref.psnr) and math.isinf(ref.vae_psnr) and ref.te_cosine == 1.0
    for row in report.rows:
        want = sdcpp.inspect(sd1, **row.request).plan.summary()
        assert row.bytes == {c: sum(t["bytes_after"] for t in types.values()) for c, types in want.items()}, row.label
        assert row.peak_rss > 0 and row.load_s > 0 and row.step_s > 0
    sizes = [report.row(t).total_bytes for t in ("reference", "f16", "q8_0", "q4_0")]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4  # more bits never fewer bytes
    errors = [report.row(t).latent_rel_l2 for t in ("f16", "q8_0", "q4_0")]
    assert errors == sorted(errors) and errors[0] > 0


def test_attribution_points_at_the_component(report):
    rows = {r.label: r for r in report.attribution["q8_0"]}
    assert set(rows) == {"q8_0 unet only", "q8_0 text encoders only", "q8_0 vae only"}
    assert rows["q8_0 vae only"].latent_rel_l2 == 0  # the VAE only decodes: the latents are the reference's
    assert rows["q8_0 vae only"].psnr < math.inf and rows["q8_0 unet only"].latent_rel_l2 > 0
    assert rows["q8_0 unet only"].request == {"type": "f32", "unet_type": "q8_0"}


def test_report_formats(report, tmp_path):
    text = str(report)
    assert "q4_0" in text and "where the error comes from" in text
    d = json.loads(report.to_json(tmp_path / "r.json"))
    assert d["rows"][0]["psnr"] == "inf" and d == json.loads((tmp_path / "r.json").read_text())
    assert "| type |" in report.table(markdown=True)


def test_metrics_edge_cases():
    a = np.random.default_rng(0).random((8, 8, 3))
    assert metrics.rel_l2(a, a) == 0 and math.isinf(metrics.psnr(a, a)) and metrics.cosine(a, a) == 1.0
    assert metrics.ssim(a, a) == 1.0
    assert metrics.psnr(a + 0.1, a) == pytest.approx(20.0)  # mse 0.01 in [0, 1] images
    assert metrics.rel_l2(np.zeros(3), np.zeros(3)) == 0


def test_groups_partition_the_tensors_and_are_rules(sd1):
    plan = sdcpp.inspect(sd1).plan
    found = groups(plan.entries)
    assert sum(len(v) for v in found.values()) == len(plan.entries)
    gid, _ = group_of("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight")
    assert gid == "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    assert group_of("unet.down_blocks.0.attentions.0.proj_in.weight")[0] == "unet.down_blocks.0.attentions.0"
    # One rule per group, in group order: the plan gives every tensor its group's type.
    types = ["q8_0", "q4_0"]
    from sdcpp.evaluation.groups import group_rule, rank_of

    rules = [f"{group_rule(g, rank_of(g))}={types[i % 2]}" for i, g in enumerate(found)]
    ruled = sdcpp.inspect(sd1, rules=rules).plan
    for i, (g, names) in enumerate(found.items()):
        assert all(ruled[n].requested == types[i % 2] for n in names), g


def test_sensitivity_ranks_groups(sd1):
    s = sensitivity(sd1, ["q8_0", "q4_0"], [PROMPT], 5, n_threads=1, progress=False, **GEN)
    assert len(s.groups) > 40
    for t in ("q8_0", "q4_0"):
        errs = [g.error[t] for g in s.ranking(t)]
        assert errs == sorted(errs, reverse=True) and errs[0] > 0
    # Every group's error is seen by a probe (the VAE encoder's too), and where the two types store a group
    # differently the coarser one costs more: the same weights, rounded more.
    assert all(g.error["q4_0"] > 0 for g in s.groups.values())
    differ = [g for g in s.groups.values() if g.types["q4_0"] != {n: t.replace("q8_0", "q4_0")
                                                                   for n, t in g.types["q8_0"].items()}
              or "q4_0" in g.types["q4_0"].values()]
    assert sum(g.error["q4_0"] > g.error["q8_0"] for g in differ) == len(differ) > 40
    assert "q4_0" in s.table(3) and s.to_dict()["groups"][0]["rule"].startswith("^")


def test_budget_quantization_meets_budget_and_beats_uniform(sd1, tmp_path):
    uniform = sdcpp.inspect(sd1, type="q5_K")
    budget = uniform.totals()[1]
    out = tmp_path / "budget.gguf"
    r = sdcpp.quantize(sd1, out, budget=budget, budget_types=["q8_0", "q5_K", "q4_K"], progress=False, n_threads=1)
    assert r.totals()[1] <= budget and out.stat().st_size <= budget + 64 * 1024  # GGUF header and alignment
    meta = sdcpp.inspect(out).budget  # recorded in the file, shown by inspect()
    assert meta == r.budget and meta["budget"] == budget and meta["bytes"] == r.totals()[1]
    assert meta["uniform"]["type"] == "q5_K"
    assert meta["measured_error"] <= meta["uniform"]["measured_error"]
    assert "budget quantization" in str(sdcpp.inspect(out))
    # The same measure, independently: the file's weights against f32, and a plain q5_K load, on one UNet call.
    ref = sdcpp.Model(sd1, type="f32", n_threads=1, progress=False)
    chosen = sdcpp.Model(out, n_threads=1, progress=False)
    plain = sdcpp.Model(sd1, type="q5_K", n_threads=1, progress=False)
    x = np.random.default_rng(0).standard_normal((1, 4, 16, 16)).astype(np.float32)
    ctx = np.random.default_rng(1).standard_normal((1, 77, 64)).astype(np.float32)

    def err(m):
        return metrics.rel_l2(m.unet.predict(x, 500.0, ctx), ref.unet.predict(x, 500.0, ctx))

    assert err(chosen) <= err(plain)


def test_max_error_and_bad_budgets(sd1, tmp_path):
    r = sdcpp.quantize(sd1, tmp_path / "e.gguf", max_error=0.05, budget_types=["q8_0", "q4_0"], progress=False,
                       n_threads=1)
    assert r.budget["predicted_error"] <= 0.05 and r.totals()[1] < sdcpp.inspect(sd1, type="q8_0").totals()[1] * 1.5
    with pytest.raises(sdcpp.QuantRequestError, match="below the smallest"):
        sdcpp.quantize(sd1, tmp_path / "x.gguf", budget="100KB", progress=False, n_threads=1)
    with pytest.raises(sdcpp.QuantRequestError, match="choose the types"):
        sdcpp.quantize(sd1, tmp_path / "x.gguf", budget="1MB", type="q8_0", progress=False)
    assert not (tmp_path / "x.gguf").exists()
    assert parse_bytes("1.2GB") == 1_200_000_000 and parse_bytes("2 MiB") == 2 << 20 and parse_bytes(512) == 512
    with pytest.raises(sdcpp.QuantRequestError):
        parse_bytes("lots")


def test_cli_writes_the_report_folder_atomically(sd1, tmp_path, monkeypatch, capsys):
    out = tmp_path / "report"
    args = ["evaluate", str(sd1), "--types", "q8_0", "--steps", "2", "-W", "32", "-H", "32", "-t", "1",
            "--no-attribution", "-o", str(out)]
    import sdcpp.evaluation.outputs as outputs

    def interrupted(report):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs, "grid", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing half-written, no temp folder left
    monkeypatch.undo()
    assert main(args) == 0
    assert {"report.json", "report.md", "grid.png", "bytes_vs_psnr.png"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "report.json").read_text())["rows"][1]["label"] == "q8_0"
    assert main(args) == 2 and "exists" in capsys.readouterr().err  # never overwrites a report
