# Stage: landscape analyses. Rules arrive with the issues that build this stage:
# they read run checkpoints/metrics and write tidy tables for the figures.
