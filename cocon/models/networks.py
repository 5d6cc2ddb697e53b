"""CoCon / DPC model: a 2D3D ResNet encoder f, a ConvGRU aggregator g and a predictor phi.

Notation (paper Sec. 3 and supplement A.1/A.4)::

    B  batch (videos)                  N  blocks per clip (8)
    C  input channels (rgb 3, flow 2, pose heatmaps 17, seg mask 1)
    K  frames per block (5)            H, W  frame size in pixels (128, or 64 for pose/seg)
    P  predicted blocks (3)            D  feature size (256)
    S  feature-map side = ceil(H / 32) (4 at 128 px, 2 at 64 px, 1 at 32 px)

Data flow of :class:`DPC` (``x`` float, shape (B, N, C, K, H, W), normalised pixel values)::

    z_j  = f(x_j)                       (B, N, D, S, S)   encoder map of block j, time-averaged
    c    = g(z_1 .. z_{N-P})            (B, D, S, S)      ConvGRU hidden state after the context
    z~_1 = phi(c),  h = g(h, z~_1)      recursive prediction (supplement Eq. 4)
    z~_2 = phi(h),  h = g(h, z~_2) ...  (B, P, D, S, S)
    target = z_{N-P+1} .. z_N           (B, P, D, S, S)

Normalisation follows CoCon's *coded* variant (``l2_norm=True``, the default): z, every hidden state
after the context and every prediction are L2-normalised over D at each spatial position, and no ReLU
is applied to z. With ``l2_norm=False`` the rollout is DPC's original one: the GRU reads ReLU(z) and
ReLU(z~), the targets are the pre-ReLU z, and nothing is normalised (DPC then uses an un-normalised,
temperature-free dot product in the NCE; see :func:`cocon.models.losses.cpc_loss`, ``normalize=False``).

Every feature is unit-free (activations); only H, W are pixels and K, N are frames / blocks.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "BasicBlock2d",
    "BasicBlock3d",
    "ResNet2d3d",
    "ConvGRUCell",
    "ConvGRU",
    "DPCOutput",
    "DPC",
    "ActionClassifier",
    "temporal_pool",
    "l2_normalize",
    "feature_side",
    "FEATURE_SIZE",
]

FEATURE_SIZE = 256  # D: output channels of layer4 for both depths (DPC uses 256, not 512)
_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def l2_normalize(x: torch.Tensor, dim: int, eps: float = 1e-8) -> torch.Tensor:
    """``x / max(||x||_2, eps)`` along ``dim`` (unit norm wherever ||x|| > eps).

    CoCon's code divides by ``||x|| + 1e-5`` instead; the difference is < 1e-5 relative for the
    feature norms seen in practice and we prefer exact unit norms."""
    return F.normalize(x, p=2.0, dim=dim, eps=eps)


def feature_side(size: int) -> int:
    """Spatial side S of the encoder output for an input side of ``size`` px: ceil(size / 32)."""
    return -(-int(size) // 32)


def temporal_pool(feat: torch.Tensor) -> torch.Tensor:
    """(B, D, T', S, S) -> (B, D, S, S): average over the encoder's output time axis.

    DPC/CoCon use ``avg_pool3d`` with kernel ceil(K/4) = T' for K = 5 (T' = 2), i.e. the same mean;
    averaging the whole axis also works for any other K."""
    return feat.mean(dim=2)


def encode_blocks(encoder: nn.Module, x: torch.Tensor, normalize: bool) -> torch.Tensor:
    """x (B, N, C, K, H, W) -> z (B, N, D, S, S): the encoder on every block, averaged over its output
    time axis, L2-normalised over D per position when ``normalize``."""
    if x.dim() != 6:
        raise ValueError(f"expected (B, N, C, K, H, W), got shape {tuple(x.shape)}")
    B, N = x.shape[:2]
    feat = temporal_pool(encoder(x.reshape(B * N, *x.shape[2:])))
    z = feat.reshape(B, N, *feat.shape[1:])
    return l2_normalize(z, dim=2) if normalize else z


def _bn3d(channels: int, track_running_stats: bool) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(channels, track_running_stats=track_running_stats)


class _Block(nn.Module):
    """Residual basic block; subclasses fix the kernel (1x3x3 or 3x3x3) and the stride pattern."""

    expansion = 1

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int,
        kernel: tuple[int, int, int],
        stride3: tuple[int, int, int],
        final_relu: bool,
        track_running_stats: bool,
    ):
        super().__init__()
        pad = tuple(k // 2 for k in kernel)
        self.conv1 = nn.Conv3d(in_ch, out_ch, kernel, stride=stride3, padding=pad, bias=False)
        self.bn1 = _bn3d(out_ch, track_running_stats)
        self.conv2 = nn.Conv3d(out_ch, out_ch, kernel, stride=1, padding=pad, bias=False)
        self.bn2 = _bn3d(out_ch, track_running_stats)
        self.relu = nn.ReLU(inplace=True)
        self.final_relu = final_relu
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_ch, out_ch, kernel_size=1, stride=stride3, bias=False),
                _bn3d(out_ch, track_running_stats),
            )
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        return self.relu(out) if self.final_relu else out


class BasicBlock2d(_Block):
    """2D residual block on video: two 1x3x3 convs, spatial stride only, i.e. stride (1, s, s)."""

    def __init__(
        self, in_ch: int, out_ch: int, stride: int = 1, final_relu: bool = True, track_running_stats: bool = True
    ):
        super().__init__(in_ch, out_ch, stride, (1, 3, 3), (1, stride, stride), final_relu, track_running_stats)


class BasicBlock3d(_Block):
    """3D residual block: two 3x3x3 convs, stride (s, s, s) in T, H and W."""

    def __init__(
        self, in_ch: int, out_ch: int, stride: int = 1, final_relu: bool = True, track_running_stats: bool = True
    ):
        super().__init__(in_ch, out_ch, stride, (3, 3, 3), (stride, stride, stride), final_relu, track_running_stats)


class ResNet2d3d(nn.Module):
    """DPC's 2D3D ResNet-18/34 encoder f (3D kernels only in the last two stages).

    Layout: conv1 1x7x7 stride (1,2,2), 64 ch, BN, ReLU -> max-pool 1x3x3 stride (1,2,2) ->
    layer1 BasicBlock2d x n1 (64 ch) -> layer2 BasicBlock2d x n2 (128 ch, spatial stride 2) ->
    layer3 BasicBlock3d x n3 (256 ch, stride 2 in T,H,W) -> layer4 BasicBlock3d x n4 (256 ch,
    stride 2); the very last block has no final ReLU (features can be negative). Shortcuts are
    1x1x1 conv + BN. ``depth`` 18 -> blocks (2,2,2,2), 34 -> (3,4,6,3); D = 256 for both.

    Init: Kaiming-normal (fan_out, ReLU) conv weights; BN gamma 1, beta 0. BN tracks running
    statistics (DPC pretraining used ``track_running_stats=False``, which its author called a
    mistake, DPC issue #21; CoCon and the fine-tuning code use True).

    ``width`` (64) is the channel count of conv1/layer1; the stages have (w, 2w, 4w, 4w) channels, so
    D = 4 * width = 256 by default (the paper). Smaller widths serve tests and the CPU demo (`train.width`).

    forward: x (B, C, K, H, W) float -> (B, D, T', ceil(H/32), ceil(W/32)),
    T' = ceil(ceil(K/2)/2) (K = 5 -> 2). Use :func:`temporal_pool` to reduce T' to one map.
    """

    def __init__(self, in_channels: int = 3, depth: int = 18, track_running_stats: bool = True, width: int = 64):
        super().__init__()
        if depth not in _LAYERS:
            raise ValueError(f"depth must be one of {sorted(_LAYERS)}, got {depth}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        n1, n2, n3, n4 = _LAYERS[depth]
        w = width
        self.in_channels = in_channels
        self.depth = depth
        self.feature_size = 4 * w  # 256 for the default width
        t = track_running_stats
        self.conv1 = nn.Conv3d(in_channels, w, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False)
        self.bn1 = _bn3d(w, t)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.layer1 = self._make(BasicBlock2d, w, w, n1, 1, True, t)
        self.layer2 = self._make(BasicBlock2d, w, 2 * w, n2, 2, True, t)
        self.layer3 = self._make(BasicBlock3d, 2 * w, 4 * w, n3, 2, True, t)
        self.layer4 = self._make(BasicBlock3d, 4 * w, 4 * w, n4, 2, False, t)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _make(block, in_ch, out_ch, n, stride, last_relu, t) -> nn.Sequential:
        layers = [block(in_ch, out_ch, stride, final_relu=(last_relu or n > 1), track_running_stats=t)]
        for i in range(1, n):
            layers.append(block(out_ch, out_ch, 1, final_relu=(last_relu or i < n - 1), track_running_stats=t))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"expected (B, C, K, H, W), got shape {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.layer4(self.layer3(x))


class ConvGRUCell(nn.Module):
    """One ConvGRU step. Gates are Conv2d(in + hidden -> hidden, k x k) on the concatenation [x, h]:

        r = sigmoid(W_r * [x, h]),  u = sigmoid(W_u * [x, h]),  n = tanh(W_o * [x, r . h])
        h' = (1 - u) . h + u . n

    Weights orthogonal, biases zero."""

    def __init__(self, input_size: int, hidden_size: int, kernel_size: int = 1):
        super().__init__()
        pad = kernel_size // 2
        self.input_size, self.hidden_size = input_size, hidden_size
        self.reset_gate = nn.Conv2d(input_size + hidden_size, hidden_size, kernel_size, padding=pad)
        self.update_gate = nn.Conv2d(input_size + hidden_size, hidden_size, kernel_size, padding=pad)
        self.out_gate = nn.Conv2d(input_size + hidden_size, hidden_size, kernel_size, padding=pad)
        for conv in (self.reset_gate, self.update_gate, self.out_gate):
            nn.init.orthogonal_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """x (B, input_size, S, S), h (B, hidden_size, S, S) -> h' (B, hidden_size, S, S)."""
        xh = torch.cat([x, h], dim=1)
        r = torch.sigmoid(self.reset_gate(xh))
        u = torch.sigmoid(self.update_gate(xh))
        n = torch.tanh(self.out_gate(torch.cat([x, r * h], dim=1)))
        return h * (1.0 - u) + n * u


class ConvGRU(nn.Module):
    """One-layer ConvGRU aggregator g with kernel 1x1 (weights shared over spatial positions).

    Dropout (p = ``dropout``, 0.1 in DPC/CoCon) is applied to the hidden state after **every** step and
    the dropped-out state is what is carried to the next step and returned (as in DPC's convrnn).
    It is active only in ``train()`` mode.

    forward(x (B, T, input_size, S, S), h0 (B, hidden_size, S, S) or None = zeros)
        -> (outputs (B, T, hidden_size, S, S), h_last (B, hidden_size, S, S))
    """

    def __init__(
        self,
        input_size: int = FEATURE_SIZE,
        hidden_size: int = FEATURE_SIZE,
        kernel_size: int = 1,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.cell = ConvGRUCell(input_size, hidden_size, kernel_size)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 5:
            raise ValueError(f"expected (B, T, C, S, S), got shape {tuple(x.shape)}")
        B, T, _, Hs, Ws = x.shape
        h = x.new_zeros(B, self.hidden_size, Hs, Ws) if h0 is None else h0
        outs = []
        for t in range(T):
            h = self.dropout(self.cell(x[:, t], h))
            outs.append(h)
        return torch.stack(outs, dim=1), h


class DPCOutput(NamedTuple):
    """Outputs of :class:`DPC` for one view (all float, unit-free features, D = 256).

    z:       (B, N, D, S, S) encoder map of every block (time-averaged; unit norm per position if l2_norm)
    pred:    (B, P, D, S, S) predicted features z~ of the last P blocks
    target:  (B, P, D, S, S) = z[:, N-P:], the true features of those blocks
    context: (B, D, S, S)    GRU hidden state after the N-P context blocks (c_{N-P}; unit norm if l2_norm)
    """

    z: torch.Tensor
    pred: torch.Tensor
    target: torch.Tensor
    context: torch.Tensor


class DPC(nn.Module):
    """Dense Predictive Coding network for one view (encoder f + ConvGRU g + predictor phi).

    Args:
        in_channels: C of the view (rgb 3, flow 2, pose heatmaps 17, seg 1).
        depth: 18 or 34 (ResNet2d3d).
        num_blocks: N, the blocks per clip the model expects (8).
        pred_steps: P, the blocks to predict (3); the GRU reads the first N - P.
        dropout: ConvGRU hidden-state dropout (0.1).
        l2_norm: True = CoCon's coded variant (unit-norm z, hidden states and predictions, no ReLU);
            False = DPC's original rollout (GRU on ReLU(z), ReLU(z~) fed back, nothing normalised).
        track_running_stats: BatchNorm setting of the encoder (True; see ResNet2d3d).
        width: encoder base width (64 -> D = 256, the paper); smaller for tests and the CPU demo.

    Sub-modules ``encoder`` (ResNet2d3d), ``gru`` (ConvGRU) and ``predictor`` (phi: Conv2d 1x1 ->
    ReLU -> Conv2d 1x1, D -> D (256), orthogonal weights, PyTorch-default biases as in DPC) can be reused
    on their own (fine-tuning uses ``encoder`` + ``gru``, see :meth:`encode`).

    forward(x (B, N, C, K, H, W)) -> DPCOutput(z, pred, target, context).
    """

    def __init__(
        self,
        in_channels: int,
        depth: int = 18,
        num_blocks: int = 8,
        pred_steps: int = 3,
        dropout: float = 0.1,
        l2_norm: bool = True,
        track_running_stats: bool = True,
        width: int = 64,
    ):
        super().__init__()
        if not 0 < pred_steps < num_blocks:
            raise ValueError(f"need 0 < pred_steps < num_blocks, got {pred_steps}, {num_blocks}")
        self.in_channels = in_channels
        self.num_blocks = num_blocks
        self.pred_steps = pred_steps
        self.l2_norm = l2_norm
        self.encoder = ResNet2d3d(in_channels, depth, track_running_stats=track_running_stats, width=width)
        D = self.encoder.feature_size
        self.feature_size = D
        self.gru = ConvGRU(D, D, kernel_size=1, dropout=dropout)
        self.predictor = nn.Sequential(
            nn.Conv2d(D, D, kernel_size=1), nn.ReLU(inplace=True), nn.Conv2d(D, D, kernel_size=1)
        )
        for m in self.predictor:
            if isinstance(m, nn.Conv2d):
                nn.init.orthogonal_(m.weight)

    def encode(self, x: torch.Tensor, normalize: bool | None = None) -> torch.Tensor:
        """Encoder features of every block.

        x (B, N, C, K, H, W) -> z (B, N, D, S, S): f per block, then the mean over the encoder's output
        time axis; L2-normalised over D per position when ``normalize`` (default: ``self.l2_norm``)."""
        return encode_blocks(self.encoder, x, self.l2_norm if normalize is None else normalize)

    def forward(self, x: torch.Tensor) -> DPCOutput:
        B, N = x.shape[:2]
        P = self.pred_steps
        if N != self.num_blocks:
            raise ValueError(f"expected N = {self.num_blocks} blocks, got {N}")
        z = self.encode(x)
        norm = self.l2_norm
        ctx_in = z[:, : N - P] if norm else F.relu(z[:, : N - P])
        _, h = self.gru(ctx_in)
        if norm:
            h = l2_normalize(h, dim=1)
        context = h
        preds = []
        for step in range(P):
            p = self.predictor(h)
            if norm:
                p = l2_normalize(p, dim=1)
            preds.append(p)
            if step < P - 1:  # the state after the last prediction is never used
                _, h = self.gru((p if norm else F.relu(p)).unsqueeze(1), h)
                if norm:
                    h = l2_normalize(h, dim=1)
        pred = torch.stack(preds, dim=1)
        return DPCOutput(z=z, pred=pred, target=z[:, N - P :], context=context)


class ActionClassifier(nn.Module):
    """Fine-tuning network F + classifier head (paper Sec. 4, supplement A.4).

    F is a DPC network's encoder f and ConvGRU g, run over all N blocks of the clip; the last hidden
    state is averaged over space, then BatchNorm1d -> Dropout(``dropout``) -> Linear(D, num_classes).
    Every layer is trained (the public code froze g by mistake). z is L2-normalised per position
    before g when ``l2_norm`` (as in the CoCon pretraining, so a pretrained g sees the inputs it was
    trained on); the head's BatchNorm rescales whatever g outputs.

    Sub-module names ``encoder`` and ``gru`` match :class:`DPC`, so a pretrained DPC state_dict loads
    with :meth:`load_pretrained`.

    forward(x (B, N, C, K, H, W)) -> logits (B, num_classes);
    features(x) -> (B, D) the pooled last hidden state (the video representation before the head).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        depth: int = 18,
        dropout: float = 0.7,
        gru_dropout: float = 0.1,
        l2_norm: bool = True,
        width: int = 64,
    ):
        super().__init__()
        self.l2_norm = l2_norm
        self.encoder = ResNet2d3d(in_channels, depth, width=width)
        D = self.encoder.feature_size
        self.gru = ConvGRU(D, D, kernel_size=1, dropout=gru_dropout)
        self.bn = nn.BatchNorm1d(D)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(D, num_classes)

    def load_pretrained(self, dpc_state: dict) -> None:
        """Load ``encoder.*`` and ``gru.*`` from a DPC state_dict (the predictor is not used)."""
        keep = {k: v for k, v in dpc_state.items() if k.startswith(("encoder.", "gru."))}
        own = self.state_dict()
        missing = [k for k in own if k.startswith(("encoder.", "gru.")) and k not in keep]
        unexpected = [k for k in keep if k not in own]
        wrong = [k for k in keep if k in own and keep[k].shape != own[k].shape]
        if missing or unexpected or wrong:
            raise ValueError(
                f"pretrained weights do not fit this classifier (another view, depth or width?): "
                f"missing {missing[:3]}, unexpected {unexpected[:3]}, other shape {wrong[:3]}"
            )
        self.load_state_dict(keep, strict=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        _, h = self.gru(encode_blocks(self.encoder, x, self.l2_norm))
        return h.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.bn(self.features(x))))
