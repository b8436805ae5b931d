"""Stacked training: arms that share architecture and hyperparameters train as one batched model.

The arms of one experiment differ only in activation and seed, so their models have the same
shapes. Here they become the members of one stacked model: every weight gains a leading member
axis, linear layers run as one batched matmul (``baddbmm``), conv layers as one grouped
convolution (members folded into the channels, ``groups`` = members), norm layers normalise each
member on its own (BatchNorm over each member's own batch, LayerNorm/GroupNorm per member), and
each activation is applied to its member group. Per-step cost is then that of one wide model, which
is what makes a grid cheap where small models are bound by per-step overhead.

What each member keeps exactly as the unstacked trainer (``worker.training.trainer``) gives it:

- its initial weights: each member is built and initialised by ``prepare_arm`` (``torch.manual_seed``
  of its seed right before), then its tensors are copied into the stacked ones;
- its batch order: ``evaluation_batches`` (``batch_indices`` of its own seed; a step budget's steps
  across data epochs), gathered per member (``X[idx]`` with idx of
  shape (members, batch));
- its loss and gradients: the stacked loss is the sum of the members' mean batch losses, so each
  member's slice of a gradient is that member's own gradient;
- its optimizer state: Adam, AdamW, RMSprop and SGD are elementwise, so one optimizer over the
  stacked tensors updates each member as its own optimizer would; global-norm gradient clipping is
  the one global operation and is done per member here;
- its learnable activation parameters: every member keeps its own activation modules; parameter-free
  (elementwise) activations run once on a whole member group;
- its metrics and diagnostics: losses, accuracies, per-layer gradient and weight norms, activation
  statistics on the probe set, learnable parameter values, all per member.

The results match the unstacked path up to float rounding: batched matmul and grouped convolution sum
in another order than their unstacked kernels, so float32 values differ in the last bits and the
difference grows slowly over steps (tests/training/test_stacked.py states the measured tolerance).

A member whose loss is not finite ends as ``diverged`` after that epoch and is removed from the stack
(the others keep their tensors and optimizer state); within the epoch its NaNs stay in its own
slices because nothing mixes members. A member whose ``on_epoch`` answer is False ends as
``cancelled`` the same way.

Models that cannot be stacked exactly train member after member through ``train_arm`` (the fallback):
recurrent models (their nn.GRU/nn.LSTM kernels have no member axis) and dropout (the unstacked
dropout masks come from the global random stream right after each member's initialisation, which a
stacked model cannot reproduce). ``RunInfo.training_path`` records which path ran. ``stacking_recommended``
says where stacking is also faster (bench/RESULTS.md): always on a GPU, for MLPs on a CPU, not for conv
nets on a CPU, where convolutions are bound by memory traffic that stacking does not reduce.

Checkpoints are per member and in ``train_arm``'s format (the member's ordinary model, optimizer and
schedule state), so a stopped stacked run resumes stacked or unstacked, and the other way round.

On CUDA the whole training step (gather, forward, backward, diagnostics, clipping, optimizer step) is
captured in a CUDA graph and replayed for every full batch (the last, smaller batch runs eagerly); the
graph is captured again when the learning rate changes or a member leaves. On CPU, grouped convolutions
run in the channels-last layout, where oneDNN is several times faster than on NCHW. The CUDA path, graph
capture included, passes the equivalence tests on an H100 (``ACTLAB_TEST_DEVICE=cuda pytest
tests/training/test_stacked.py``); there the graph made a 25-arm MLP grid 3x faster than eager stacked steps
(bench/RESULTS.md). ``cuda_graphs=False`` turns the capture off.

The package: ``plan`` (whether and how to stack: ``can_stack``, ``stacking_recommended``,
``member_memory_bytes``, ``group_members``), ``layers`` (stacked linear, conv, norm and activation
layers), ``network`` (stacked models, member copy-in and copy-out), ``run`` (the stacked model's
training steps and CUDA graphs) and ``trainer`` (``train_stacked``, the driver). Each epoch runs the
ordinary trainer's epoch body (``worker.training.epochs.run_epoch``) and ends members by its outcome rule
(``worker.training.trainer.record_epoch``).
"""

from worker.training.stacked.network import StackedNetwork, build_stacked_model, copy_member_into
from worker.training.stacked.plan import Member, can_stack, group_members, member_memory_bytes, stacking_recommended
from worker.training.stacked.trainer import OnEpoch, OnStart, train_stacked

__all__ = [
    "Member",
    "OnEpoch",
    "OnStart",
    "StackedNetwork",
    "build_stacked_model",
    "can_stack",
    "copy_member_into",
    "group_members",
    "member_memory_bytes",
    "stacking_recommended",
    "train_stacked",
]
