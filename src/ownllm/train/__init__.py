"""One training loop for pretraining and fine-tuning: settings, optimizer, schedule, data, checkpoints.

Read in this order: config.py (every setting and the presets), loader.py (batches from token
shards), schedule.py and optim.py (how weights move), checkpoint.py (what a resume needs),
device.py (where and in which precision), trainer.py (the loop), pretrain_command.py (the CLI).
"""
