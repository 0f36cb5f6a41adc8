"""Drop-in modules and swap_convs/restore_convs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import miniplaces_ext as me
from miniplaces_ext.nn import count_convs
from conftest import miniplaces_root, requires_data

MEAN = torch.tensor([0.45486851, 0.43632515, 0.40461355]).view(3, 1, 1)
STD = torch.tensor([0.26440552, 0.26142306, 0.27963778]).view(3, 1, 1)


def _resnet_like() -> nn.Module:
    """A real ResNet (BatchNorm, 7x7/2 stem, strided 1x1 downsamples) from torchvision."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=100)
    # Non-trivial BatchNorm statistics, as a trained model has.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _val_images(count: int) -> torch.Tensor:
    root = miniplaces_root()
    names = [line.split()[0] for line in (root / "val.txt").read_text().splitlines()[:count]]
    images = [torch.from_numpy(np.asarray(Image.open(root / "images" / n).convert("RGB"), dtype=np.float32) / 255)
              for n in names]
    return (torch.stack(images).permute(0, 3, 1, 2) - MEAN) / STD


@requires_data
def test_swap_convs_keeps_logits_on_real_images():
    model = _resnet_like()
    x = _val_images(8)
    with torch.no_grad():
        before = model(x)
        swapped = me.swap_convs(model)
        assert swapped is model
        assert count_convs(model) == {"ours": 20, "torch": 0}
        after = model(x)
    rel = (after - before).abs().max() / before.abs().max()
    assert rel <= 1e-4, f"relative logit difference {rel:.2e}"
    assert (after.argmax(1) == before.argmax(1)).all()


def test_swap_shares_parameters_and_restores():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
                          nn.Sequential(nn.Conv1d(8, 4, 3, bias=False)))
    weight = model[0].weight
    keys = set(model.state_dict())
    me.swap_convs(model)
    assert type(model[0]) is me.Conv2d and type(model[2][0]) is me.Conv1d
    assert model[0].weight is weight, "parameters are shared, not copied"
    assert model[0].padding_mode == "reflect" and model[2][0].bias is None
    assert set(model.state_dict()) == keys
    me.restore_convs(model)
    assert type(model[0]) is nn.Conv2d and type(model[2][0]) is nn.Conv1d
    assert model[0].weight is weight


def test_swap_of_a_bare_conv_returns_new_module():
    conv = nn.Conv2d(3, 4, 3)
    ours = me.swap_convs(conv)
    assert type(ours) is me.Conv2d and ours.weight is conv.weight


def test_modules_are_drop_in():
    torch.manual_seed(0)
    theirs = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding="valid", dilation=(1, 2), groups=2)
    ours = me.Conv2d(4, 6, (3, 2), stride=(2, 1), padding="valid", dilation=(1, 2), groups=2)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 4, 11, 11)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)
    conv1 = nn.Conv1d(3, 5, 4, padding="same", padding_mode="circular")
    ours1 = me.Conv1d(3, 5, 4, padding="same", padding_mode="circular")
    ours1.load_state_dict(conv1.state_dict())
    x1 = torch.randn(2, 3, 13)
    torch.testing.assert_close(ours1(x1), conv1(x1), rtol=1e-4, atol=1e-5)


def test_training_step_through_swapped_model_matches_torch():
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    ours = me.swap_convs(__import__("copy").deepcopy(ref))
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    for model in (ref, ours):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for (name, a), b in zip(ref.named_parameters(), ours.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
