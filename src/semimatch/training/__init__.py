"""The training step and what it needs: the two-pass forward, EMA, optimizer, metrics, evaluation,
memory estimate and the recipe that builds model, method and optimizer."""
