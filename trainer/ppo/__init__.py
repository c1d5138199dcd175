"""PPO-family algorithms: MAPPO and TAD-PPO (transformation and distillation), with GAE and value normalization."""
