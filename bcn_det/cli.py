"""The command line of tools/train_net.py, for YAML configs (bcn_det.engine) and LazyConfigs
(bcn_det.lazy) alike: the options, the checks made before any process starts, the launch, and
a user's mistakes said in one line."""
import functools

from detectron2.engine import default_argument_parser

from bcn.pretrained import CheckpointError
from bcn.utils.runs import prepare_run_dir

from . import engine, lazy
from .compat import launch
from .config import load_config
from .datasets import check_datasets
from .modeling import check_bcn_config
from .toy import register_toy_coco


def argument_parser():
    parser = default_argument_parser()
    parser.description = ("Train / evaluate detectron2 models with BCN and WS. --num-gpus is the "
                          "number of processes per machine: GPUs (NCCL) or, without CUDA, CPU "
                          "processes (gloo).")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in an OUTPUT_DIR that holds one (the old run is "
                        "moved to a dated sibling folder)")
    parser.add_argument("--show-traceback", action="store_true",
                        help="show the traceback of a configuration or checkpoint error (by "
                        "default one line says what is wrong and what to do)")
    return parser


# A user's mistakes, said in one line: before launch (bad keys are KeyErrors there), and while
# building and loading (a group count that does not divide a layer, a checkpoint that does not fit)
USER_ERRORS = (CheckpointError, ValueError, KeyError)
RUN_ERRORS = (CheckpointError, ValueError)


def _user_errors_in_one_line(entry, args):
    """A user's mistake (a checkpoint that does not fit, a bad config value) ends the run with
    its message, not a traceback: the message names what is wrong and what to do."""
    try:
        return entry(args)
    except RUN_ERRORS as error:
        if args.show_traceback:
            raise
        raise SystemExit(one_line(error)) from None


def one_line(error) -> str:
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return f"error: {message} (--show-traceback shows where)"


def check_before_launch(args, lazy_config: bool) -> None:
    """What can be checked from the config alone, checked before any process starts or writes:
    options after the overrides, the config's keys and norms, the datasets' files, and the
    output folder (refused, or moved aside with --overwrite)."""
    stray = [o for o in args.opts if o.startswith("--")]
    if stray:
        raise ValueError(f"{' '.join(stray)} came after the config overrides, where it would be read "
                         "as one: put options before the KEY VALUE (or key=value) overrides")
    if lazy_config:
        cfg = lazy.load(args)
        lazy.check_lazy_model(cfg.model)
        register_toy_coco(None)
        names, (output_dir, setting) = lazy.dataset_names(cfg), (cfg.train.output_dir, "train.output_dir")
    else:
        try:
            cfg = load_config(args.config_file, args.opts)
        except AssertionError as error:  # yacs' "Non-existent key"
            raise KeyError(f"{args.config_file}: {error} (bcn_det adds the keys of "
                           "bcn_det.add_bcn_config)") from None
        check_bcn_config(cfg)
        register_toy_coco(cfg.DATASETS.TOY_ROOT or None)
        names = list(cfg.DATASETS.TEST) + ([] if args.eval_only else list(cfg.DATASETS.TRAIN))
        output_dir, setting = cfg.OUTPUT_DIR, "OUTPUT_DIR"
    check_datasets(names)
    if not args.eval_only:  # before any process of the job writes into the folder
        prepare_run_dir(output_dir, setting, resume=args.resume, overwrite=args.overwrite,
                        move=args.machine_rank == 0)


def run(argv=None):
    """tools/train_net.py: a YAML config through bcn_det.engine, a LazyConfig (.py) through
    bcn_det.lazy; the same options for both."""
    args = argument_parser().parse_args(argv)
    lazy_config = lazy.is_lazy_config(args.config_file)
    entry = lazy.main if lazy_config else engine.main
    try:
        check_before_launch(args, lazy_config)
    except USER_ERRORS as error:
        if args.show_traceback:
            raise
        raise SystemExit(one_line(error)) from None
    return launch(functools.partial(_user_errors_in_one_line, entry), args.num_gpus, num_machines=args.num_machines,
                  machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
