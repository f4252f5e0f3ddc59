"""nnU-Net: pretrain the network nnU-Net trains (dynamic_network_architectures,
from a small plans file or from arguments), export it, and load the file with
nnU-Net's own load_pretrained_weights."""
import json
import pydoc

import pytest
import torch

from .helpers import script, tiny_args

pytest.importorskip("dynamic_network_architectures", reason="needs dynamic_network_architectures "
                                                            "(requirements-nnunet.txt; CI installs it)")
nnunet_loader = pytest.importorskip("nnunetv2.run.load_pretrained_weights",
                                    reason="needs nnunetv2 (requirements-nnunet.txt; CI installs it)")

pretrain = script("pretrain")
export = script("export_nnunet")
common = script("common")

ARCH = {"n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3], [3, 3, 3], [1, 3, 3]], "strides": [[1, 1, 1], [2, 2, 2], [1, 2, 2]],
        "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True}}
REQ = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def write_plans(path, arch=ARCH, cls="PlainConvUNet"):
    """A plans file shaped like nnU-Net v2's: the 3d_fullres configuration inherits its network from 3d_base."""
    plans = {"dataset_name": "Dataset999_Test", "plans_name": "nnUNetPlans", "configurations": {
        "3d_base": {"patch_size": [16, 16, 16], "architecture": {
            "network_class_name": f"dynamic_network_architectures.architectures.unet.{cls}", "arch_kwargs": arch,
            "_kw_requires_import": REQ}},
        "3d_fullres": {"inherits_from": "3d_base", "batch_size": 2}}}
    path.write_text(json.dumps(plans))
    return str(path)


def nnunet_network(plans_path, num_classes=3, input_channels=1):
    """The network as nnU-Net's get_network_from_plans builds it (nnU-Net's own code, written out here:
    importing it needs batchgenerators), with deep supervision as nnU-Net trains."""
    conf = json.load(open(plans_path))["configurations"]
    arch = dict(conf["3d_base"]["architecture"])
    kwargs = dict(arch["arch_kwargs"])
    for key in arch["_kw_requires_import"]:
        if kwargs[key] is not None:
            kwargs[key] = pydoc.locate(kwargs[key])
    net = pydoc.locate(arch["network_class_name"])(input_channels=input_channels, num_classes=num_classes,
                                                   deep_supervision=True, **kwargs)
    net.apply(net.initialize)
    return net


def _run(main, args, capsys):
    rc = common.run_main(main, args)
    return rc, capsys.readouterr()


def pretrain_from_plans(data, tmp_path, capsys) -> tuple:
    """(plans file, run folder, its encoder.pt) of a tiny pretraining of the plans' PlainConvUNet."""
    plans = write_plans(tmp_path / "nnUNetPlans.json")
    out = tmp_path / "run"
    rc, cap = _run(pretrain.main, tiny_args(data, out, tmp_path / "cache", "--backbone", "nnunet:PlainConvUNet",
                                            "--nnunet-plans", plans), capsys)
    assert rc == 0, cap.err
    return plans, out, torch.load(out / "encoder.pt")


def test_pretrain_export_and_nnunet_loads_it(data, tmp_path, capsys):
    plans, out, saved = pretrain_from_plans(data, tmp_path, capsys)
    fresh = nnunet_network(plans)
    assert set(saved) == {k for k in fresh.state_dict() if k.startswith("encoder.")}  # nnU-Net's own names
    rc, cap = _run(export.main, [str(out), "--plans", plans, "--out", str(tmp_path / "pretrained.pth")], capsys)
    assert rc == 0, cap.err
    assert "encoder-only pretraining: the decoder keeps nnU-Net's initialisation" in cap.out
    net = nnunet_network(plans)
    nnunet_loader.load_pretrained_weights(net, str(tmp_path / "pretrained.pth"))
    state = net.state_dict()
    for key, value in saved.items():
        assert torch.equal(state[key], value), key
        assert torch.equal(state["decoder." + key], value), key  # the decoder's view of the same encoder
    moved = [k for k in saved if not torch.equal(saved[k], fresh.state_dict()[k])]
    assert moved, "pretraining changed no encoder tensor"
    # a checkpoint (the whole pretraining model) exports the same encoder tensors
    ckpt = sorted((out / "checkpoints").glob("step_*.pt"))[-1]
    rc, cap = _run(export.main, [str(ckpt), "--out", str(tmp_path / "from_ckpt.pth")], capsys)
    assert rc == 0, cap.err
    again = torch.load(tmp_path / "from_ckpt.pth")["network_weights"]
    assert all(torch.equal(again[k], v) for k, v in saved.items())
    # the file is never overwritten unasked
    rc, cap = _run(export.main, [str(out), "--out", str(tmp_path / "pretrained.pth")], capsys)
    assert rc == 2 and "exists; pass --overwrite" in cap.err


def test_whole_network_pretraining_exports_its_decoder_too(tmp_path, capsys):
    """A dense pretext task saves the whole network (decoder included) under its own prefix."""
    from rubikops.models.nnunet import NnUNetArchitecture
    plans = write_plans(tmp_path / "p.json", cls="ResidualEncoderUNet", arch={
        **{k: v for k, v in ARCH.items() if k not in ("n_conv_per_stage", "n_conv_per_stage_decoder")},
        "n_blocks_per_stage": [1, 2, 2], "n_conv_per_stage_decoder": [1, 1]})
    torch.manual_seed(0)
    dense = NnUNetArchitecture.from_plans(plans).build(num_classes=5)
    with torch.no_grad():
        for p in dense.parameters():
            p.add_(torch.randn_like(p))
    state = {"model." + k: v for k, v in dense.state_dict().items()}
    torch.save(state, tmp_path / "dense.pt")
    rc, cap = _run(export.main, [str(tmp_path / "dense.pt"), "--plans", plans, "--out", str(tmp_path / "w.pth")],
                   capsys)
    assert rc == 0, cap.err
    assert "the whole network (encoder and decoder) is pretrained" in cap.out
    net = nnunet_network(plans, num_classes=2)
    nnunet_loader.load_pretrained_weights(net, str(tmp_path / "w.pth"))
    for key, value in net.state_dict().items():
        if ".seg_layers." not in key:
            assert torch.equal(value, dense.state_dict()[key]), key


def test_a_dense_model_around_the_backbone_exports_the_whole_network(tmp_path, capsys):
    """What a dense pretext task does with an nnunet: backbone: NnUNetSegmenter around it, so nnU-Net's
    own decoder is trained on the same encoder and the export takes both."""
    from rubikops.models import build_encoder
    from rubikops.models.nnunet import NnUNetSegmenter
    plans = write_plans(tmp_path / "p.json")
    backbone = build_encoder("nnunet:PlainConvUNet", plans=plans)
    dense = NnUNetSegmenter(backbone.architecture, 1, encoder=backbone)
    assert dense.network.encoder is backbone.encoder and dense.network.decoder.encoder is backbone.encoder
    opt = torch.optim.SGD(dense.parameters(), lr=0.1)
    x = torch.randn(2, 1, 12, 16, 16)
    for _ in range(2):  # a few restoration steps
        opt.zero_grad()
        torch.nn.functional.mse_loss(dense(x), x).backward()
        opt.step()
    torch.save({"model": {"task." + k: v for k, v in dense.state_dict().items()}, "step": 2},
               tmp_path / "ckpt.pt")
    rc, cap = _run(export.main, [str(tmp_path / "ckpt.pt"), "--plans", plans, "--out", str(tmp_path / "w.pth")],
                   capsys)
    assert rc == 0, cap.err
    assert "the whole network (encoder and decoder) is pretrained" in cap.out
    net = nnunet_network(plans)
    nnunet_loader.load_pretrained_weights(net, str(tmp_path / "w.pth"))
    trained = dense.network.state_dict()
    for key, value in net.state_dict().items():
        if ".seg_layers." not in key:
            assert torch.equal(value, trained[key]), key


def test_default_architecture_trains_and_a_plans_mismatch_is_one_line(data, tmp_path, capsys):
    out = tmp_path / "run"
    rc, cap = _run(pretrain.main, tiny_args(data, out, tmp_path / "cache", "--backbone", "nnunet:ResidualEncoderUNet",
                                            "--norm", "instance"), capsys)
    assert rc == 0, cap.err
    meta = json.load(open(out / "encoder.json"))["nnunet"]
    assert meta["network_class_name"].endswith("ResidualEncoderUNet")
    assert meta["arch_kwargs"]["features_per_stage"] == [4, 8, 16]  # --width 4, cube 8: 3 stages down to 2 voxels
    rc, cap = _run(export.main, [str(out), "--out", str(tmp_path / "w.pth")], capsys)
    assert rc == 0 and "encoder-only pretraining" in cap.out, cap.err
    other = write_plans(tmp_path / "bigger.json", cls="ResidualEncoderUNet", arch={
        **{k: v for k, v in ARCH.items() if k not in ("n_conv_per_stage", "n_conv_per_stage_decoder")},
        "features_per_stage": [8, 16, 32], "n_blocks_per_stage": [1, 3, 4], "n_conv_per_stage_decoder": [1, 1]})
    rc, cap = _run(export.main, [str(out), "--plans", other, "--out", str(tmp_path / "x.pth")], capsys)
    assert rc == 2 and cap.err.count("\n") == 1
    assert "do not fit ResidualEncoderUNet" in cap.err and "shape mismatches" in cap.err
    assert not (tmp_path / "x.pth").exists()
    rc, cap = _run(pretrain.main, tiny_args(data, tmp_path / "r2", tmp_path / "cache", "--backbone",
                                            "nnunet:Unknown"), capsys)
    assert rc == 2 and "nnunet:Unknown: choose one of nnunet:PlainConvUNet" in cap.err
    deep = write_plans(tmp_path / "deep.json", arch=dict(ARCH, strides=[[1, 1, 1], [2, 2, 2], [4, 4, 4]]))
    rc, cap = _run(pretrain.main, tiny_args(data, tmp_path / "r3", tmp_path / "cache", "--backbone",
                                            "nnunet:PlainConvUNet", "--nnunet-plans", deep), capsys)
    assert rc == 2 and cap.err.count("\n") == 1
    assert "--cube-size (8, 8, 8) is too small for PlainConvUNet" in cap.err
    assert "(use at least (16, 16, 16))" in cap.err


@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_finetune_builds_the_recorded_network_and_loads_its_encoder(data, tmp_path, capsys, task):
    finetune = script("finetune")
    _, run, saved = pretrain_from_plans(data, tmp_path, capsys)
    model, report, decoder_report = finetune.build_model(finetune.parse(["--preset", "tiny", "--task", task,
                                                                         "--pretrained", str(run)])[0], 3, 1)
    assert sorted(report.loaded) == sorted(saved) and decoder_report is None  # nnU-Net builds its own decoder
    assert not (report.missing or report.unexpected or report.mismatched)
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, saved[key]), key
    x = torch.randn(2, 1, 12, 10, 9)  # not a multiple of the total stride: padded and cropped back
    y = model(x)
    assert tuple(y.shape) == ((2, 3, 12, 10, 9) if task == "segmentation" else (2, 3))
    rc, cap = _run(finetune.main, ["--preset", "tiny", "--no-progress", "--no-tensorboard", "--task", task,
                                   "--pretrained", str(run), "--out", str(tmp_path / "ft")], capsys)
    assert rc == 0, cap.err
    assert f"encoder weights: {len(saved)} tensors loaded, 0 missing" in cap.err


def test_plans_that_differ_in_norm_are_reported_and_the_shapes_that_fit_copied(data, tmp_path, capsys):
    from rubikops.models.nnunet import NnUNetArchitecture
    out = tmp_path / "run"
    rc, cap = _run(pretrain.main, tiny_args(data, out, tmp_path / "cache", "--backbone", "nnunet:PlainConvUNet",
                                            "--norm", "batch"), capsys)
    assert rc == 0, cap.err
    instance = NnUNetArchitecture.default("PlainConvUNet", 1, width=4, norm="instance", n_stages=3).arch_kwargs
    plans = write_plans(tmp_path / "instance.json", arch=instance)
    rc, cap = _run(export.main, [str(out), "--plans", plans, "--out", str(tmp_path / "w.pth")], capsys)
    assert rc == 0, cap.err
    assert "note: the pretrained network differs from" in cap.out and "norm_op" in cap.out
    saved = torch.load(out / "encoder.pt")
    stats = [k for k in saved if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert stats and f"{len(stats)} saved tensors unused" in cap.out  # batch statistics have no place
    net = nnunet_network(plans)
    nnunet_loader.load_pretrained_weights(net, str(tmp_path / "w.pth"))
    for key, value in net.state_dict().items():
        if key in saved:
            assert torch.equal(value, saved[key]), key
