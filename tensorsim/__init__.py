"""tensorsim: GPU-vectorized simulation of populations of interacting language-model agents."""
from omegaconf import OmegaConf

# `${min:20,${trial.steps}}` in trial files: a final window no longer than the run
OmegaConf.register_new_resolver("min", lambda *values: min(values), replace=True)
