"""ImageBackbone: a bad ``out_indices`` ends in a message that names the key and the valid range."""

from __future__ import annotations

import pytest

from bevbridge.models.image.backbone import ImageBackbone


def test_out_indices_beyond_the_backbone_names_the_key_and_the_range():
    """resnet18 has timm feature levels 0..4; asking for 5 used to end in timm's bare IndexError. Catches the check
    being lost (IndexError again) or an off-by-one in the range it reports."""
    with pytest.raises(ValueError, match=r"out_indices \(3, 5\).*0\.\.4.*model\.image\.out_indices"):
        ImageBackbone("resnet18", (3, 5))
    assert ImageBackbone("resnet18", (3, 4)).strides == [16, 32]  # the valid neighbours still build
