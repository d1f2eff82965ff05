"""Low-rank Multimodal Fusion as a torch nn.Module: the 2018 module, fixed and device-neutral.

The attribute names are the 2018 ones, so `state_dict()` lists exactly the
2018 keys in their order (engine/state_dict.py) and loads into the original
module. Differences from the 2018 code, none of which changes a result: no
`.cuda()` in the constructor (the trainer picks the device), no `.squeeze()`
(it broke batch size 1), the never-applied post-fusion dropout and the LSTM's
inert `dropout` argument are left out, and no Variable/DTYPE plumbing.
"""

import torch
import torch.nn.functional as F
from torch import nn

from engine import state_dict
from lmf_torch_npu import device


class SubNet(nn.Module):
  """Audio/visual encoder: BatchNorm -> Dropout -> 3 x (Linear, ReLU)."""

  def __init__(self, in_size, hidden, dropout):
    super().__init__()
    self.norm = nn.BatchNorm1d(in_size)
    self.drop = nn.Dropout(dropout)
    self.linear_1 = nn.Linear(in_size, hidden)
    self.linear_2 = nn.Linear(hidden, hidden)
    self.linear_3 = nn.Linear(hidden, hidden)

  def forward(self, x):
    # BatchNorm runs in its parameters' dtype, float32 under every AMP mode (its batch
    # statistics are what fp16 gets wrong), then hands on the dtype it was given (half under
    # apex O2).
    with torch.autocast(x.device.type, enabled=False):
      x = self.norm(x.to(self.norm.weight.dtype)).to(x.dtype)
    x = self.drop(x)
    x = F.relu(self.linear_1(x))
    x = F.relu(self.linear_2(x))
    return F.relu(self.linear_3(x))


def _bf16_lstm_missing(x):
  """Whether x is about to meet an LSTM under CPU bf16 autocast on a CPU without a bf16 LSTM."""
  return (x.device.type == 'cpu' and torch.is_autocast_enabled('cpu')
          and torch.get_autocast_dtype('cpu') == torch.bfloat16
          and not device.cpu_bf16_lstm_works())


class TextSubNet(nn.Module):
  """Text encoder: LSTM over the GloVe sequence, dropout on h_T, Linear to text_out."""

  def __init__(self, in_size, hidden, out, dropout):
    super().__init__()
    self.rnn = nn.LSTM(in_size, hidden, batch_first=True)
    self.dropout = nn.Dropout(dropout)
    self.linear_1 = nn.Linear(hidden, out)

  def forward(self, x):
    if _bf16_lstm_missing(x):
      # The LSTM alone in float32; h_n meets autocast again in linear_1.
      with torch.autocast('cpu', enabled=False):
        _, (h_n, _) = self.rnn(x.to(self.rnn.weight_ih_l0.dtype))
    else:
      _, (h_n, _) = self.rnn(x)
    # h_n is (layers, batch, hidden); indexing the layer keeps the batch axis at batch size 1,
    # where the 2018 `.squeeze()` dropped it.
    return self.linear_1(self.dropout(h_n[-1]))


class LMF(nn.Module):
  """The 2018 LMF: modality encoders, then fusion with rank-`rank` modality factors.

  Each modality vector gets a constant 1 in front, is projected by its factor
  to (rank, batch, out), the three are multiplied elementwise, weighted over
  the rank axis and offset by a bias. Logits, no softmax.
  """

  def __init__(self, input_dims, hidden_dims, text_out, dropouts, output_dim, rank):
    super().__init__()
    audio_in, video_in, text_in = input_dims
    audio_hidden, video_hidden, text_hidden = hidden_dims
    self.audio_subnet = SubNet(audio_in, audio_hidden, dropouts[0])
    self.video_subnet = SubNet(video_in, video_hidden, dropouts[1])
    self.text_subnet = TextSubNet(text_in, text_hidden, text_out, dropouts[2])
    self.audio_factor = nn.Parameter(torch.empty(rank, audio_hidden + 1, output_dim))
    self.video_factor = nn.Parameter(torch.empty(rank, video_hidden + 1, output_dim))
    self.text_factor = nn.Parameter(torch.empty(rank, text_out + 1, output_dim))
    self.fusion_weights = nn.Parameter(torch.empty(1, rank))
    self.fusion_bias = nn.Parameter(torch.zeros(1, output_dim))
    for factor in (self.audio_factor, self.video_factor, self.text_factor, self.fusion_weights):
      nn.init.xavier_normal_(factor)

  def forward(self, audio, visual, text):
    fused = None
    for factor, h in ((self.audio_factor, self.audio_subnet(audio)),
                      (self.video_factor, self.video_subnet(visual)),
                      (self.text_factor, self.text_subnet(text))):
      with_one = torch.cat([h.new_ones(h.shape[0], 1), h], dim=1)
      projected = torch.matmul(with_one, factor)  # (rank, batch, out)
      fused = projected if fused is None else fused * projected
    # (1, rank) @ (batch, rank, out) -> (batch, 1, out); squeeze only that axis.
    return torch.matmul(self.fusion_weights, fused.permute(1, 0, 2)).squeeze(1) + self.fusion_bias


def from_config(config, input_dims=state_dict.DEFAULT_INPUT_DIMS):
  """The LMF of `config`, initialised from torch's global RNG (seed it first)."""
  return LMF(input_dims, (config.audio_hidden, config.video_hidden, config.text_hidden),
             config.text_out, (config.audio_dropout, config.video_dropout, config.text_dropout),
             config.output_dim, config.rank)
