"""`hsjp-study evaluate --checkpoint`: our and the model zoo's checkpoint formats loaded strictly,
saved here from randomly initialised full-size models (official key names), and the bad inputs."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

from orchestrator.cli.main import main
from tests.testdev_data import SPLIT, make_testdev_root
from tests.workloads.pose.test_testdev import check_results_file
from workloads.config import ModelConfig
from workloads.models import build_model
from workloads.pose.checkpoint import BGRInput, load_strict, read_checkpoint

NARROW = ModelConfig(width=4, num_blocks=1, num_modules=(1, 1, 1))


@pytest.fixture(scope="module")
def full_states() -> dict[str, dict[str, torch.Tensor]]:
    """Full-size HRNet-W32 and SimpleBaseline-R50 pose networks (17 joints), random init."""
    gen = torch.Generator().manual_seed(0)
    return {
        b: build_model(ModelConfig(backbone=b), 17, generator=gen).state_dict()
        for b in ("hrnet_w32", "simplebaseline_r50")
    }


def _narrow_state() -> dict[str, torch.Tensor]:
    return build_model(NARROW, 17, generator=torch.Generator().manual_seed(1)).state_dict()


@pytest.mark.parametrize(
    "wrap, entry, prefix",
    [
        (lambda s: s, "(top level)", ""),  # zoo pose_hrnet_w32_256x192.pth / our weights.pt
        (lambda s: {f"module.{k}": v for k, v in s.items()}, "(top level)", "module."),  # DataParallel save
        (
            lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}, "epoch": 3},
            "state_dict",
            "module.",
        ),
        (
            lambda s: {"best_state_dict": s, "state_dict": {}, "perf": 0.7, "epoch": 210},
            "best_state_dict",
            "",
        ),
        (lambda s: {"model": s, "optimizer": {"state": {}}, "epoch": 4}, "model", ""),  # our epoch checkpoint
    ],
)
def test_every_supported_format_loads_strictly(tmp_path, wrap, entry, prefix):
    state = _narrow_state()
    path = tmp_path / "ckpt.pth.tar"
    torch.save(wrap(state), path)
    loaded = read_checkpoint(path)
    assert (loaded.entry, loaded.prefix) == (entry, prefix)
    model = build_model(NARROW, 17)
    load_strict(model, loaded.state, path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_full_size_official_format_checkpoints_load(tmp_path, full_states):
    for backbone, state in full_states.items():
        path = tmp_path / f"{backbone}.pth"
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
        model = build_model(ModelConfig(backbone=backbone), 17)
        load_strict(model, read_checkpoint(path).state, path)
        assert torch.equal(model.state_dict()["final_layer.weight"], state["final_layer.weight"])


def test_bgr_adapter_feeds_the_reversed_channels():
    seen = []
    inner = torch.nn.Identity()
    inner.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    rgb = torch.rand(1, 3, 4, 4)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    BGRInput(inner)((rgb - mean) / std)
    assert torch.allclose(seen[0], (rgb.flip(1) - mean) / std, atol=1e-6)


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["evaluate", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.realdata
def test_bad_checkpoints_exit_2_naming_the_first_mismatched_key(tmp_path, full_states, coco_dets, capsys):
    base = ["--coco-root", coco_dets, "--out", tmp_path / "out"]
    other = tmp_path / "resnet.pth"  # the other backbone's checkpoint
    torch.save(full_states["simplebaseline_r50"], other)
    code, _, err = _run(capsys, "--checkpoint", other, "--backbone", "hrnet_w32", *base)
    assert code == 2 and "first mismatched key 'conv1.weight'" in err and len(err.strip().splitlines()) == 1
    missing = dict(full_states["hrnet_w32"])
    del missing["stage2.0.branches.0.0.conv1.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    code, _, err = _run(capsys, "--checkpoint", tmp_path / "missing.pth", "--backbone", "hrnet_w32", *base)
    assert code == 2 and "first mismatched key 'stage2.0.branches.0.0.conv1.weight': missing" in err
    full = tmp_path / "full.pth"
    torch.save(full_states["hrnet_w32"], full)
    (tmp_path / "truncated.pth").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    code, _, err = _run(capsys, "--checkpoint", tmp_path / "truncated.pth", "--backbone", "hrnet_w32", *base)
    assert code == 2 and "truncated.pth: cannot be read as a torch checkpoint" in err
    extra = dict(full_states["simplebaseline_r50"], **{"fc.weight": torch.zeros(2)})
    torch.save(extra, tmp_path / "extra.pth")
    code, _, err = _run(
        capsys, "--checkpoint", tmp_path / "extra.pth", "--backbone", "simplebaseline_r50", *base
    )
    assert code == 2 and "first mismatched key 'fc.weight': not in the model" in err
    assert not (tmp_path / "out").exists()  # nothing written before the checkpoint loaded


@pytest.mark.realdata
def test_a_test_split_without_image_info_exits_2_naming_the_path(
    tmp_path, full_states, coco_mini, coco_dets, capsys
):
    root, det_file, _ = make_testdev_root(tmp_path, coco_mini, coco_dets)
    (root / "annotations" / f"image_info_{SPLIT}.json").unlink()
    ckpt = tmp_path / "sb.pth"
    torch.save(full_states["simplebaseline_r50"], ckpt)
    code, _, err = _run(capsys, "--checkpoint", ckpt, "--backbone", "simplebaseline_r50", "--coco-root", root,
                        "--split", SPLIT, "--detections", det_file, "--out", tmp_path / "out")  # fmt: skip
    assert code == 2 and f"image_info_{SPLIT}.json" in err and str(root) in err


@pytest.mark.realdata
def test_zoo_format_checkpoint_on_a_test_dev_shaped_split(
    tmp_path, full_states, coco_mini, coco_dets, capsys
):
    """The setup check end to end on the shared samples: SimpleBaseline-R50 in the zoo's .pth.tar format
    (random weights, so AP is meaningless; the files and their shape are what is checked)."""
    root, det_file, image_ids = make_testdev_root(tmp_path, coco_mini, coco_dets)
    ckpt = tmp_path / "pose_resnet_50_256x192.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in full_states["simplebaseline_r50"].items()}}, ckpt)
    out = tmp_path / "out"
    code, stdout, _ = _run(capsys, "--checkpoint", ckpt, "--backbone", "simplebaseline_r50", "--coco-root", root,
                           "--split", SPLIT, "--detections", det_file, "--out", out, "--channel-order", "bgr")  # fmt: skip
    assert code == 0, stdout
    name = f"person_keypoints_{SPLIT}_simplebaseliner50-poseresnet50256x192_results.json"  # the server's name
    results = json.loads((out / name).read_text())
    check_results_file(results, image_ids)
    with zipfile.ZipFile(out / name.replace(".json", ".zip")) as zf:  # what is submitted: the json inside
        assert zf.namelist() == [name] and zf.read(name) == (out / name).read_bytes()
    assert sorted(p.name for p in out.iterdir()) == [name, name.replace(".json", ".zip")]
    assert not (out / "metrics.json").exists() and f"submit {out / name.replace('.json', '.zip')}" in stdout
    assert "weights from state_dict, prefix 'module.' removed" in stdout and "input BGR" in stdout
    code, stdout, _ = _run(capsys, "--checkpoint", ckpt, "--backbone", "simplebaseline_r50", "--coco-root",
                           coco_dets, "--out", out, "--max-images", 1)  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert code == 0 and 0.0 <= metrics["AP"] <= 1.0
    assert "--channel-order bgr" in stdout
    # GT boxes (no --detections): said so, and not compared with the zoo's detection-box AP
    assert "with GT boxes" in stdout and "no comparison with the model zoo" in stdout
    assert "publishes no GT-box AP" in stdout and "difference" not in stdout
    dets = coco_dets / "person_detection_results" / "COCO_val2017_detections_AP_H_56_person.json"
    code, stdout, _ = _run(capsys, "--checkpoint", ckpt, "--backbone", "simplebaseline_r50", "--coco-root",
                           coco_dets, "--out", out, "--max-images", 1, "--detections", dets)  # fmt: skip
    assert code == 0 and "model zoo pose_resnet_50_256x192.pth.tar: 70.4" in stdout and "difference" in stdout
    assert "GT boxes" not in stdout


def test_an_alg_with_underscores_is_refused_before_anything_runs(tmp_path, capsys):
    code, _, err = _run(capsys, "--checkpoint", tmp_path / "absent.pth", "--backbone", "hrnet_w32", "--coco-root",
                        tmp_path, "--out", tmp_path / "out", "--alg", "my_model")  # fmt: skip
    assert code == 2 and "--alg" in err and "'my_model'" in err and "no '_'" in err
    assert not (tmp_path / "out").exists()


def test_checkpoint_mode_needs_its_arguments(tmp_path, capsys):
    code, _, err = _run(capsys, "--checkpoint", tmp_path / "x.pth")
    assert code == 2 and "--backbone" in err and "--coco-root" in err
    code, _, err = _run(capsys)
    assert code == 2 and "--checkpoint" in err


def _pre_041(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` as PyTorch before 0.4.1 saved it: no BatchNorm num_batches_tracked counters, and no
    `_metadata` versions (a plain dict)."""
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("backbone", ["hrnet_w32", "simplebaseline_r50"])
def test_zoo_checkpoint_without_batch_counters_loads_as_pytorch_would(tmp_path, full_states, backbone):
    """The zoo's pose_resnet_50_256x192.pth.tar (and the HRNet zoo file, were it as old) predate
    num_batches_tracked; PyTorch's strict load accepts them, so must ours."""
    old = _pre_041(full_states[backbone])
    counters = [k for k in full_states[backbone] if k.endswith("num_batches_tracked")]
    assert len(counters) > 50 and not any(k.endswith("num_batches_tracked") for k in old)
    reference = build_model(ModelConfig(backbone=backbone), 17)
    reference.load_state_dict(old, strict=True)  # PyTorch itself accepts the file
    path = tmp_path / "pose_resnet_50_256x192.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in old.items()}, "epoch": 140}, path)
    model = build_model(ModelConfig(backbone=backbone), 17, generator=torch.Generator().manual_seed(5))
    for k in counters:  # a non-zero start shows that the load sets them (to what PyTorch gives: 0)
        model.get_buffer(k).fill_(7)
    filled = load_strict(model, read_checkpoint(path).state, path)
    assert sorted(filled) == sorted(counters)
    loaded = model.state_dict()
    assert all(int(loaded[k]) == 0 == int(reference.state_dict()[k]) for k in counters)
    assert all(torch.equal(loaded[k], v) for k, v in old.items())


def test_a_missing_weight_is_still_refused_beside_absent_counters(tmp_path, full_states):
    old = _pre_041(full_states["simplebaseline_r50"])
    del old["layer2.0.conv2.weight"]
    path = tmp_path / "pose_resnet_50_256x192.pth.tar"
    torch.save(old, path)
    model = build_model(ModelConfig(backbone="simplebaseline_r50"), 17)
    with pytest.raises(ValueError, match=r"first mismatched key 'layer2\.0\.conv2\.weight': missing"):
        load_strict(model, read_checkpoint(path).state, path)
    no_bn = {k: v for k, v in _pre_041(full_states["simplebaseline_r50"]).items() if not k.startswith("bn1.")}
    with pytest.raises(ValueError, match=r"first mismatched key 'bn1\.weight': missing"):  # whole BN absent
        load_strict(model, no_bn, path)


def test_gt_box_summary_makes_no_zoo_comparison():
    from orchestrator.cli.evaluate import format_summary

    base = {
        "checkpoint": {"file": "zoo.pth.tar", "entry": "state_dict", "prefix": "module.", "counters_filled": 53},
        "persons": 6352, "images": 5000, "results_file": "r.json", "metrics_file": "m.json",
        "metrics": {"AP": 0.724}, "channel_order": "bgr", "zoo": ("pose_resnet_50_256x192.pth.tar", 70.4),
        "split": "val2017",
    }  # fmt: skip
    gt = format_summary({**base, "boxes": "GT boxes", "gt_boxes": True}, "simplebaseline_r50")
    assert "AP 72.4 with GT boxes" in gt and "no comparison with the model zoo" in gt
    assert "difference" not in gt and "53 BatchNorm num_batches_tracked counters absent" in gt
    det = format_summary({**base, "boxes": "detections d.json", "gt_boxes": False}, "simplebaseline_r50")
    assert "model zoo pose_resnet_50_256x192.pth.tar: 70.4" in det and "difference +2.0" in det
    other = format_summary(
        {**base, "boxes": "detections d.json", "gt_boxes": False, "split": "train2017"}, "simplebaseline_r50"
    )
    assert "difference" not in other and "is on val2017" in other
