"""Training infrastructure shared by every application.

    from fhcnn.training import TrainConfig, Trainer
    trainer = Trainer(model, cfg.train, out_dir, batch_fn, loss_fn, val_fn, quiet=False)
    history = trainer.fit(resume=False)

See :class:`Trainer` for the contract of ``batch_fn``/``loss_fn``/``val_fn``, and
:mod:`fhcnn.training.checkpoint` for the checkpoint format.
"""

from .checkpoint import (
                         Checkpoint,
                         CheckpointError,
                         CheckpointManager,
                         CheckpointWarning,
                         latest_checkpoint,
                         load_checkpoint,
                         load_weights,
                         verify_checkpoint,
)
from .config import TrainConfig
from .device import move_to_device, resolve_device, unwrap_model
from .distributed import (
                         PeerLostError,
                         cleanup_distributed,
                         dist_info,
                         init_distributed,
                         is_main_process,
                         params_in_sync,
                         shard_batch,
)
from .optim import lr_factor
from .seeding import seed_everything, step_generator, step_seed
from .trainer import NonFiniteLossError, Trainer, TrainingError

__all__ = [
    "TrainConfig", "Trainer", "NonFiniteLossError", "TrainingError", "PeerLostError",
    "CheckpointError", "CheckpointWarning", "Checkpoint", "CheckpointManager",
    "load_weights", "load_checkpoint", "latest_checkpoint", "verify_checkpoint",
    "resolve_device", "init_distributed", "cleanup_distributed", "dist_info", "is_main_process",
    "shard_batch", "params_in_sync", "seed_everything", "step_generator", "step_seed", "unwrap_model",
    "move_to_device", "lr_factor",
]
