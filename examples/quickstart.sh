#!/usr/bin/env sh
# The command-line story on a fresh machine: train on the built-in data, continue the run,
# score it, forecast the next day and look at the state it carries. About two minutes on 2 cores.
set -e
RUN=${1:-runs/demo}

hiddenstate train --out "$RUN"                        # 60 epochs; prints test metrics vs repeat-last
hiddenstate train --out "$RUN" --resume --epochs 90   # continues exactly where it stopped
hiddenstate evaluate "$RUN" --horizon 48 --method rollout
hiddenstate forecast "$RUN" --horizon 96 --out "$RUN/next_day.csv"
hiddenstate inspect "$RUN" --lanes 4                  # the state spec and each lane's h and c
hiddenstate plot "$RUN"                               # redraws forecast.png and states.png
