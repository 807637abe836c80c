"""What every agent kind shares: populations, counter-based RNG, the neighbour graph, interaction, labels,
metrics, run patterns and the StepRecord a step returns. Imports nothing else of tensorsim but errors."""
