"""The R1 pipeline: named stages (RL, SFT, rejection sampling, distillation) over one train state."""
