# descentlab: every paper figure, from data to plot.
#   snakemake --cores all                      # default config (scale: cpu)
#   snakemake --cores all --config scale=smoke # minutes; what CI runs
# The logic lives in src/descentlab; rules and scripts only wire it together.

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "src/descentlab/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/average.smk"
include: "workflow/rules/analyses.smk"
include: "workflow/rules/figures.smk"


rule all:
    input:
        FIGURE_FILES,
        f"{RESULTS}/claims.csv",
        f"{RESULTS}/runs/index.csv",
    default_target: True
