"""MONAI both ways: a MONAI dataset of MetaTensors becomes a VolumeBank with
its affines, and a pretrained ``unet`` encoder (and UNet3D decoder) loads
into monai.networks.nets.BasicUNet, checked against MONAI's own modules."""
import os

import numpy as np
import pytest
import torch

from rubikops.data import VolumeBank
from rubikops.models import UNet3D, UNetEncoder3D
from rubikops.models.to_monai import basic_unet_arguments, load_into_basic_unet

monai = pytest.importorskip("monai", reason="MONAI interop needs monai (requirements.txt)")
from monai.data import MetaTensor  # noqa: E402
from monai.networks.nets import BasicUNet  # noqa: E402


def _perturbed(module, seed):
    """Random weights everywhere, norm statistics included, so a wrong mapping shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            positive = "var" in name or (name.endswith("weight") and t.ndim == 1)  # variances, norm scales
            if t.dtype.is_floating_point:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if positive else torch.randn(t.shape, generator=g) * 0.3)
    return module.eval()


@pytest.mark.parametrize("norm,depth", [("batch", 5), ("instance", 5), ("batch", 4)])
def test_unet_encoder_loads_into_basic_unet_and_computes_the_same_stages(norm, depth):
    enc = _perturbed(UNetEncoder3D(2, width=4, depth=depth, norm=norm), seed=1)
    net = BasicUNet(**basic_unet_arguments(4, in_channels=2, out_channels=3, norm=norm)).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    report = load_into_basic_unet(net, enc.state_dict())
    assert not report.unmapped
    kept_blocks = {k.split(".")[0] for k in report.kept}
    assert ("down_4" in kept_blocks) == (depth == 4) and "upcat_1" in kept_blocks and "final_conv" in kept_blocks
    for k in report.kept:  # left exactly as MONAI initialised them
        assert torch.equal(net.state_dict()[k], before[k]), k
    x = torch.randn(2, 2, 32, 34, 36)  # level 4 keeps 2 voxels a side (instance norm needs more than 1)
    ours = enc.stages(x)
    with torch.no_grad():
        theirs = [net.conv_0(x)]
        for i in range(1, depth):
            theirs.append(getattr(net, f"down_{i}")(theirs[-1]))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert net(x).shape == (2, 3, 32, 34, 36)


def test_unet3d_decoder_levels_load_into_basic_unet_upcats():
    model = _perturbed(UNet3D(UNetEncoder3D(1, width=4, depth=5, norm="batch"), 2, norm="batch"), seed=2)
    net = BasicUNet(**basic_unet_arguments(4, norm="batch")).eval()
    report = load_into_basic_unet(net, model.state_dict())
    assert {k.split(".")[0] for k in report.kept} == {"upcat_1", "final_conv"}
    assert sorted(report.unmapped) == sorted(k for k in model.state_dict() if k.startswith(("up.0.", "dec.0.", "out.")))
    g = torch.Generator().manual_seed(3)
    for level in (1, 2, 3):  # UNet3D's level i: up[i] then dec[i] on [skip, up]; MONAI's upcat_{i+1}
        deep = torch.randn(1, 4 * 2 ** (level + 1), 3, 4, 5, generator=g)
        skip = torch.randn(1, 4 * 2 ** level, 6, 8, 10, generator=g)
        with torch.no_grad():
            ours = model.dec[level](torch.cat([skip, model.up[level](deep)], 1))
            theirs = getattr(net, f"upcat_{level + 1}")(deep, skip)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_basic_unet_refuses_what_does_not_fit():
    net = BasicUNet(**basic_unet_arguments(8))
    with pytest.raises(ValueError, match=r"stages_\.0\.0\.weight \(4, 1, 3, 3, 3\) does not fit conv_0\.conv_0"):
        load_into_basic_unet(net, UNetEncoder3D(1, width=4, depth=4).state_dict())
    from rubikops.models import VGG3D  # single-convolution levels: no BasicUNet counterpart
    with pytest.raises(ValueError, match=r"fill conv_0 only in part \(conv_0\.conv_1\.conv\.weight has no"):
        load_into_basic_unet(net, VGG3D(1, width=8, convs=(1, 1, 1, 1)).state_dict())
    with pytest.raises(ValueError, match="none of the saved tensors maps to it"):
        load_into_basic_unet(net, {"head.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match="norm must be one of batch, instance"):
        basic_unet_arguments(8, norm="group")


# -- MONAI data in ----------------------------------------------------------------------------------------------
def _affine(seed):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    a = np.eye(4)
    a[:3, :3] = q * rng.uniform(0.5, 3.0, size=3)
    a[:3, 3] = rng.normal(size=3) * 50
    return a


def test_bank_from_a_list_of_metatensor_dicts_keeps_affines_and_spacing():
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(1, 9, 7, 8)).astype(np.float32), rng.normal(size=(1, 6, 10, 5)).astype(np.float32)]
    affines = [_affine(1), _affine(2)]
    # the second as a float64 Fortran-ordered (non-contiguous) tensor: taken by value, not by layout
    tensors = [torch.from_numpy(arrays[0]), torch.from_numpy(np.asfortranarray(arrays[1].astype(np.float64)))]
    assert not tensors[1].is_contiguous()
    items = [{"image": MetaTensor(t, affine=torch.from_numpy(f)), "label": 0} for t, f in zip(tensors, affines)]
    lps = MetaTensor(torch.from_numpy(arrays[0]), affine=torch.from_numpy(np.diag([-1.0, -1, 1, 1]) @ affines[0]),
                     meta={"space": "LPS"})
    items.append({"image": lps})
    bank = VolumeBank.from_monai(items)
    assert len(bank) == 3
    for i, (a, f) in enumerate(zip(arrays + arrays[:1], affines + affines[:1])):
        np.testing.assert_allclose(bank[i].numpy(), a, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(bank.affines[i], f, atol=1e-12)
        np.testing.assert_allclose(bank.spacings[i], np.linalg.norm(f[:3, :3], axis=0))
    with pytest.raises(KeyError, match=r"item 0: no 'img' entry \(it has image, label\)"):
        VolumeBank.from_monai(items, key="img")
    with pytest.raises(TypeError, match=r"item 0\['image'\]: Tensor has no affine"):
        VolumeBank.from_monai([{"image": torch.zeros(1, 4, 4, 4)}])
    with pytest.raises(ValueError, match=r"item 0: array of shape \(4, 4, 4\), expected channel-first"):
        VolumeBank.from_monai([MetaTensor(torch.zeros(4, 4, 4))])


def test_bank_from_a_monai_dataset_matches_rubikops_loading(tmp_path):
    import nibabel as nib
    from monai.data import Dataset
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
    from rubikops.data import Preprocessing, load_volumes
    rng = np.random.default_rng(4)
    files = []
    for i in range(2):
        path = str(tmp_path / f"v{i}.nii.gz")
        nib.save(nib.Nifti1Image(rng.normal(size=(8, 9, 10)).astype(np.float32), _affine(10 + i)), path)
        files.append(path)
    ds = Dataset([{"image": f} for f in files], transform=Compose([LoadImaged("image", image_only=True),
                                                                  EnsureChannelFirstd("image")]))
    bank = VolumeBank.from_monai(ds)
    ours = load_volumes(files, Preprocessing(orientation=None), cache=False).volumes
    assert bank.names == [os.path.basename(f) for f in files]
    for i, vol in enumerate(ours):
        np.testing.assert_array_equal(bank[i].numpy(), vol.data)
        np.testing.assert_allclose(bank.affines[i], vol.affine, atol=1e-5)
