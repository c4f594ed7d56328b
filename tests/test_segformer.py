"""SegFormer's building blocks (segtut.models.segformer) against smp's implementation and the paper."""

import pytest
import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.encoders import mix_transformer as smp_mit

from segtut.models import build_model, count_parameters
from segtut.models.segformer import (AllMLPDecoder, EfficientSelfAttention, MixFFN,
                                     MixTransformerBlock, OverlapPatchEmbedding)


def grid_tokens(batch=2, channels=32, height=6, width=8, seed=0):
    torch.manual_seed(seed)
    return torch.randn(batch, height * width, channels), height, width


# ---------------------------------------------------------------------- overlapping patches

@pytest.mark.parametrize("kernel, stride, size, expected", [
    (7, 4, (180, 240), (45, 60)),  # the first stage: 1/4
    (3, 2, (45, 60), (23, 30)),  # the others: 1/2 each, rounding up
    (7, 4, (192, 256), (48, 64)),
])
def test_patch_embedding_shapes(kernel, stride, size, expected):
    embed = OverlapPatchEmbedding(3, 16, kernel, stride)
    assert embed(torch.randn(1, 3, *size)).shape == (1, 16, *expected)


def _columns_seen(embed, column):
    """Input columns that influence the output token at row 0 and the given column."""
    image = torch.randn(1, 3, 16, 16, requires_grad=True)
    embed(image)[0, 0, 0, column].backward()  # one channel: LayerNorm makes channel sums 0
    return set(torch.nonzero(image.grad.abs().sum(dim=(0, 1, 2))).flatten().tolist())


def test_neighbouring_patches_overlap_by_kernel_minus_stride():
    torch.manual_seed(0)
    embed = OverlapPatchEmbedding(3, 8, kernel_size=7, stride=4)
    first, second = _columns_seen(embed, 0), _columns_seen(embed, 1)
    assert first == set(range(0, 4)) and second == set(range(1, 8))  # padding 3 on the left
    assert len(first & second) == 3
    vit_like = torch.nn.Conv2d(3, 8, kernel_size=4, stride=4)  # ViT's patches: kernel = stride
    assert not _columns_seen(vit_like, 0) & _columns_seen(vit_like, 1)


def test_patch_embedding_matches_smp():
    torch.manual_seed(0)
    theirs = smp_mit.OverlapPatchEmbed(patch_size=7, stride=4, in_chans=3, embed_dim=32).eval()
    ours = OverlapPatchEmbedding(3, 32, 7, 4)
    ours.load_state_dict(theirs.state_dict())
    images = torch.randn(2, 3, 37, 53)
    torch.testing.assert_close(ours(images), theirs(images))


# ---------------------------------------------------------------------- efficient attention

@pytest.mark.parametrize("reduction", [1, 2, 4])
def test_efficient_attention_matches_smp(reduction):
    tokens, height, width = grid_tokens(channels=32)
    theirs = smp_mit.Attention(32, num_heads=2, qkv_bias=True, sr_ratio=reduction).eval()
    ours = EfficientSelfAttention(32, num_heads=2, reduction=reduction)
    ours.load_state_dict(theirs.state_dict())
    out = ours(tokens, height, width)
    assert out.shape == tokens.shape
    torch.testing.assert_close(out, theirs(tokens, height, width))


def test_reduction_conv_is_the_papers_reshape_and_linear():
    # Paper: reshape K from (N, C) to (N / R, C * R), then Linear(C * R, C). With R = s * s
    # tokens of an s x s square per row, that is a convolution with kernel = stride = s.
    torch.manual_seed(0)
    channels, s, height, width = 4, 2, 4, 6
    attention = EfficientSelfAttention(channels, num_heads=1, reduction=s)
    grid = torch.randn(1, channels, height, width)
    by_conv = attention.sr(grid).flatten(2).transpose(1, 2)  # (1, N / R, C)
    squares = grid.unfold(2, s, s).unfold(3, s, s)  # (1, C, h / s, w / s, s, s)
    rows = squares.permute(0, 2, 3, 1, 4, 5).reshape(1, -1, channels * s * s)  # (1, N / R, C * R)
    linear = torch.nn.Linear(channels * s * s, channels)
    linear.weight.data = attention.sr.weight.reshape(channels, -1)
    linear.bias.data = attention.sr.bias
    torch.testing.assert_close(linear(rows), by_conv)
    assert by_conv.shape[1] == height * width // (s * s)


def test_plain_attention_is_blind_to_token_order_and_mix_ffn_is_not():
    tokens, height, width = grid_tokens(batch=1, channels=16)
    order = torch.randperm(height * width)
    attention = EfficientSelfAttention(16, num_heads=2, reduction=1)
    torch.testing.assert_close(attention(tokens[:, order], height, width),
                               attention(tokens, height, width)[:, order])
    ffn = MixFFN(16, 64)
    assert not torch.allclose(ffn(tokens[:, order], height, width),
                              ffn(tokens, height, width)[:, order])


def test_mix_ffn_tells_border_tokens_from_inner_ones():
    torch.manual_seed(0)
    ffn = MixFFN(8, 32)
    height, width = 5, 7
    tokens = torch.ones(1, height * width, 8)  # every token identical
    out = ffn(tokens, height, width).reshape(height, width, 8)
    inner = out[1:-1, 1:-1]
    torch.testing.assert_close(inner, out[2, 3].expand_as(inner))  # same everywhere inside
    assert not torch.allclose(out[0, 0], out[2, 3])  # the zero padding marks the border


# ---------------------------------------------------------------------- a whole block

@pytest.mark.parametrize("reduction", [1, 4])
def test_block_matches_smp(reduction):
    torch.manual_seed(0)
    theirs = smp_mit.Block(32, num_heads=2, mlp_ratio=4, qkv_bias=True, sr_ratio=reduction,
                           norm_layer=lambda c: smp_mit.LayerNorm(c, eps=1e-6)).eval()
    ours = MixTransformerBlock(32, num_heads=2, reduction=reduction, mlp_ratio=4)
    state = {key.replace("dwconv.dwconv", "dwconv"): value for key, value in theirs.state_dict().items()}
    ours.load_state_dict(state)
    x = torch.randn(2, 32, 8, 12)
    torch.testing.assert_close(ours(x), theirs(x))


# ---------------------------------------------------------------------- the decoder

def _decoder_pair(encoder_name="mit_b0", channels=256, num_classes=11):
    torch.manual_seed(0)
    model = smp.Segformer(encoder_name=encoder_name, encoder_weights=None, classes=num_classes,
                          decoder_segmentation_channels=channels).eval()
    in_channels = tuple(c for c in model.encoder.out_channels[2:])
    ours = AllMLPDecoder(in_channels, channels, num_classes).eval()
    state = {}
    for i in range(4):  # smp orders its MLPs deepest first and uses nn.Linear
        linear = model.decoder.mlp_stage[3 - i].linear
        state[f"unify.{i}.weight"] = linear.weight[:, :, None, None]
        state[f"unify.{i}.bias"] = linear.bias
    for key, value in model.decoder.fuse_stage.state_dict().items():
        state[f"fuse.{key}"] = value
    state["predict.weight"] = model.segmentation_head[0].weight
    state["predict.bias"] = model.segmentation_head[0].bias
    ours.load_state_dict(state)
    return model, ours


def test_all_mlp_decoder_matches_smp_at_quarter_resolution():
    model, ours = _decoder_pair()
    with torch.no_grad():
        images = torch.randn(2, 3, 96, 128)
        features = model.encoder(images)  # [image, empty 1/2 placeholder, 1/4, 1/8, 1/16, 1/32]
        logits = ours(features[2:])
        expected = model.segmentation_head[0](model.decoder(features))
    assert logits.shape == (2, 11, 24, 32)
    torch.testing.assert_close(logits, expected)
    assert count_parameters(ours) == (count_parameters(model.decoder)
                                      + count_parameters(model.segmentation_head))


def test_mit_b0_encoder_strides_and_widths():
    model = smp.Segformer(encoder_name="mit_b0", encoder_weights=None, classes=11)
    with torch.no_grad():
        features = model.encoder(torch.randn(1, 3, 192, 256))
    assert [tuple(f.shape[1:]) for f in features[2:]] == [
        (32, 48, 64), (64, 24, 32), (160, 12, 16), (256, 6, 8)]  # strides 4, 8, 16, 32
    assert features[1].shape[1] == 0  # smp's empty stand-in for a 1/2 stage MiT does not have
    sr_ratios = [getattr(model.encoder, f"block{i}")[0].attn.sr_ratio for i in (1, 2, 3, 4)]
    assert sr_ratios == [8, 4, 2, 1]  # R = 64, 16, 4, 1


# ---------------------------------------------------------------------- the paper's sizes

def test_segformer_b0_parameter_count():
    # Xie et al. (2021), Table 1: SegFormer-B0 on ADE20K (150 classes), 3.8 M parameters.
    model = smp.Segformer(encoder_name="mit_b0", encoder_weights=None, classes=150,
                          decoder_segmentation_channels=256)
    assert 3.7e6 < count_parameters(model) < 3.85e6
    assert 0.40e6 < count_parameters(model) - count_parameters(model.encoder) < 0.45e6


def test_segformer_b2_parameter_count():
    # Table 1: MiT-B2 encoder 24.2 M, decoder (C = 768) 3.3 M, 27.5 M in total.
    model = smp.Segformer(encoder_name="mit_b2", encoder_weights=None, classes=150,
                          decoder_segmentation_channels=768)
    assert round(count_parameters(model.encoder) / 1e6, 1) == 24.2
    assert round((count_parameters(model) - count_parameters(model.encoder)) / 1e6, 1) == 3.3
    assert round(count_parameters(model) / 1e6, 1) == 27.5


def test_registered_segformer_keeps_the_contract_at_camvid_size():
    model = build_model("smp_segformer", 11, pretrained=False).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 180, 240)).shape == (1, 11, 180, 240)
    assert model.multiple == 32  # smp asks for multiples of 32; the wrapper pads to 192x256
