import pytest
import torch

from rubikops.inference import sliding_window
from rubikops.models import (BACKBONES, DUC3D, Classifier, SiameseOctad, UNet3D, build_encoder, load_encoder,
                             pixel_shuffle_3d)


def _pretrained(backbone):
    torch.manual_seed(0)
    return SiameseOctad(build_encoder(backbone, 1, 4), 8, 6, hidden=8, cube_size=(16, 16, 16))


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("make", [lambda e: Classifier(e, 3), lambda e: UNet3D(e, 3), lambda e: DUC3D(e, 3)],
                         ids=["classifier", "unet", "duc"])
def test_encoder_transfers_into_each_network_with_exact_report(backbone, make):
    octad = _pretrained(backbone)
    torch.manual_seed(1)
    net = make(build_encoder(backbone, 1, 4))
    rep = load_encoder(net.encoder, octad.state_dict())  # a whole SiameseOctad state_dict: its encoder part
    assert sorted(rep.loaded) == sorted(net.encoder.state_dict()) and not (rep.missing or rep.unexpected
                                                                          or rep.mismatched)
    for k, v in net.encoder.state_dict().items():
        assert torch.equal(v, octad.encoder.state_dict()[k]), k
    # the plain encoder.pt form, with one tensor missing, one extra and one of the wrong shape
    state = dict(octad.encoder.state_dict())
    keys = list(state)
    dropped, reshaped = keys[0], keys[3]
    del state[dropped]
    state["head.extra.weight"] = torch.zeros(2)
    state[reshaped] = torch.zeros(tuple(state[reshaped].shape) + (2,))
    torch.manual_seed(1)
    net2 = make(build_encoder(backbone, 1, 4))
    before = {k: v.clone() for k, v in net2.encoder.state_dict().items()}
    rep = load_encoder(net2.encoder, state)
    assert rep.missing == [dropped] and rep.unexpected == ["head.extra.weight"]
    assert [m[0] for m in rep.mismatched] == [reshaped]
    assert len(rep.loaded) == len(keys) - 2
    assert torch.equal(net2.encoder.state_dict()[dropped], before[dropped])  # left as initialised
    assert "1 missing, 1 unexpected, 1 shape mismatches" in rep.summary()
    with pytest.raises(ValueError, match="strict"):
        load_encoder(net2.encoder, state, strict=True)


def test_ddp_prefix_is_stripped():
    octad = _pretrained("vgg")
    state = {"module." + k: v for k, v in octad.encoder.state_dict().items()}
    rep = load_encoder(build_encoder("vgg", 1, 4), state)
    assert not rep.missing and not rep.unexpected


def test_pixel_shuffle_3d_against_loops():
    x = torch.randn(2, 3 * 8, 2, 3, 2)
    y = pixel_shuffle_3d(x, 2)
    assert y.shape == (2, 3, 4, 6, 4)
    for c in range(3):
        for a in range(2):
            for b in range(2):
                for e in range(2):
                    ch = c * 8 + a * 4 + b * 2 + e
                    torch.testing.assert_close(y[:, c, a::2, b::2, e::2], x[:, ch])


@pytest.mark.parametrize("make", [lambda e: Classifier(e, 4), lambda e: UNet3D(e, 4), lambda e: DUC3D(e, 4)],
                         ids=["classifier", "unet", "duc"])
def test_a_few_finetuning_steps_reduce_the_loss(make):
    torch.manual_seed(0)
    net = make(build_encoder("vgg", 1, 4))
    x = torch.randn(4, 1, 16, 16, 16)
    y = torch.randint(0, 4, (4,)) if isinstance(net, Classifier) else (x[:, 0] > 0).long() + 2 * (x[:, 0] > 1).long()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("shape,patch,overlap", [((1, 2, 20, 23, 17), (8, 9, 7), 0.5), ((2, 1, 9, 9, 9), (4, 4, 4), 0.25),
                                                 ((1, 1, 5, 30, 6), (8, 8, 8), 0.0)])
def test_sliding_window_reproduces_a_pointwise_network(shape, patch, overlap):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(shape[1], 3, 1), torch.nn.Tanh()).eval()
    x = torch.randn(shape)
    torch.testing.assert_close(sliding_window(x, patch, net, overlap=overlap, batch=3), net(x), rtol=1e-5,
                               atol=1e-6)


def test_sliding_window_equals_the_whole_volume_when_the_patch_covers_it():
    torch.manual_seed(0)
    net = UNet3D(build_encoder("unet", 1, 4), 3).eval()
    x = torch.randn(1, 1, 16, 24, 16)
    with torch.no_grad():
        whole = net(x)
    torch.testing.assert_close(sliding_window(x, (16, 24, 16), net), whole)
    torch.testing.assert_close(sliding_window(x, (32, 32, 32), net), whole)  # patch larger than the volume
    with pytest.raises(ValueError, match="overlap"):
        sliding_window(x, (8, 8, 8), net, overlap=1.0)
