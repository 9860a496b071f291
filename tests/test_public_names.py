"Every public name keeps working from the module it was first exported from, whatever notebook now defines it."
import importlib

import pytest

# `__all__` of each module before the course split (issue 14); names may move, imports must not break
PUBLIC = {
    'video': ['FrameTable', 'TABLE_VERSION', 'VIDEO_EXTS', 'VideoCheck', 'VideoError', 'VideoInfo', 'VideoReader', 'VideoWarning', 'cache_dir', 'check_video', 'clamp_indices', 'clip_frame_indices', 'clip_span', 'frame_table', 'list_videos', 'probe', 'probe_cli', 'read_exact', 'window_starts'],
    'samples': ['SAMPLES', 'cut_mid_packet', 'draw_index_code', 'make_hard_cases', 'make_samples', 'read_index_code', 'render_scene', 'sample_dir', 'samples_cli', 'write_edit_list_mp4', 'write_overcounted_mp4', 'write_packed_bframes_avi', 'write_video'],
    'toybench': ['ANNOTATIONS', 'CLASSES', 'GENERATOR_VERSION', 'PRESETS', 'SPLITS', 'SUBSETS', 'ToyBench', 'ToyBenchError', 'ToyConfig', 'ToyObject', 'ToyScene', 'annotations_json', 'camera_path', 'default_cache', 'generate', 'object_track', 'render', 'sample_scene', 'scene_annotations', 'toy_config', 'toybench_cli', 'toybench_parser'],
    'sampling': ['PasteConfig', 'PastePlan', 'bg_indices', 'plot_timeline', 'region_frames', 'sample_plan', 'show_plan', 'src_indices', 'stack_spans'],
    'paste': ['AugmentConfig', 'AugmentParams', 'FrameBank', 'KINETICS_MEAN', 'KINETICS_STD', 'apply_augment', 'augment', 'collate_banks', 'colour_matrix', 'denormalize', 'draw_pair', 'explore', 'load_bank', 'paste_batch', 'sample_augment', 'show_batch', 'show_pair', 'show_scale_sweep', 'synth_batch', 'synth_cli', 'synth_sample', 'synthesize'],
    'encoder': ['BACKBONES', 'Encoder', 'TinyNet', 'build_backbone', 'conv_block', 'feature_offset', 'fit_temporal_stride', 'load_backbone_weights', 'receptive_field', 'region_align', 'region_pool', 'span_boxes', 'temporal_stride'],
    'loss': ['ContrastiveObjective', 'MoCo', 'PAL', 'ProjectionHead', 'VideoContrast', 'background_gap', 'background_spans', 'frame_weights', 'gather_features', 'info_nce', 'rank_offset', 'shuffle_groups', 'symmetric_info_nce'],
    'train': ['Batch', 'CachedVideo', 'Item', 'LOG_COLUMNS', 'METHODS', 'PalDataset', 'RESUMABLE', 'RUN_FILES', 'Run', 'StepSampler', 'TrainConfig', 'TrainingError', 'VideoSource', 'batch_videos', 'build_objective', 'collate', 'config_from_args', 'derive_seed', 'extended_lr_factor', 'fit', 'load_checkpoint', 'load_encoder', 'lr_factor', 'make_inputs', 'make_loader', 'make_optimizer', 'make_scheduler', 'plot_log', 'pretrain_cli', 'pretrain_parser', 'probe_videos', 'read_log', 'resolve_device', 'restart_warmup', 'sample_figure', 'save_checkpoint', 'save_figures', 'to_channels_last', 'window_bank'],
    'features': ['ACTIONFORMER_DATASET_KEYS', 'ClipGrid', 'ExtractError', 'FORMATS', 'H5_FILE', 'IDENTITY', 'TIMES_RULE', 'VIDEO_INFO_COLUMNS', 'actionformer_config', 'actionformer_num_frames', 'auto_jobs', 'boundary_curve', 'boundary_profile', 'context_margin', 'dataset_values', 'encode_clips', 'encoder_digest', 'extract', 'extract_cli', 'extract_features', 'extract_parser', 'feature_names', 'identity_augment', 'load_model', 'open_manifest', 'pca_2d', 'preprocess', 'random_encoder', 'read_csv', 'read_h5', 'rescale_features', 'row_labels', 'row_times', 'save_encoder', 'self_similarity', 'seq_len_multiple', 'slim_checkpoint', 'tal_config_cli', 'tal_config_parser', 'to_yaml', 'video_ids', 'window_plan', 'write_csv', 'write_h5', 'write_video_info'],
    'localize': ['DetectionResult', 'EvalInputError', 'FeatureVideo', 'HeadConfig', 'LocDataset', 'LocHead', 'TIOU_PRESETS', 'average_precision', 'collate', 'decode_video', 'eval_cli', 'evaluate', 'giou_loss_1d', 'gt_segments', 'head_loss', 'interpolated_ap', 'load_features', 'load_gt', 'load_pred', 'make_targets', 'match_detections', 'parse_gt', 'parse_pred', 'predict', 'segment_iou', 'soft_nms', 'synthetic_features', 'train_head'],
    'bench': ['BENCH_PRESETS', 'BenchConfig', 'VARIANTS', 'bench_cli', 'bench_config', 'bench_parser', 'diagnose', 'features', 'identity_share', 'machine', 'make_toy_config', 'make_train_config', 'oracle_labels', 'paired_diffs', 'paired_plot', 'plot_results', 'pretrained', 'probe', 'results_table', 'row_dataset', 'row_probe', 'run_bench', 'run_key', 'summarize', 'variant_table', 'write_results'],
}


@pytest.mark.parametrize('module', sorted(PUBLIC))
def test_public_names_still_import(module):
    mod = importlib.import_module(f'pal.{module}')
    missing = [n for n in PUBLIC[module] if not hasattr(mod, n)]
    assert not missing, f'pal.{module} lost {missing}'


def test_console_scripts_resolve():
    "Each console script of settings.ini names a function that exists."
    from configparser import ConfigParser
    from pathlib import Path
    cfg = ConfigParser(delimiters=['=']); cfg.read(Path(__file__).parents[1] / 'settings.ini')
    scripts = [s.split('=', 1) for s in cfg['DEFAULT']['console_scripts'].split()]
    assert {'pal-synth', 'pal-pretrain', 'pal-extract', 'pal-eval', 'pal-bench', 'pal-probe', 'pal-toybench'} <= {n for n, _ in scripts}
    for name, target in scripts:
        mod, fn = target.split(':')
        assert callable(getattr(importlib.import_module(mod), fn, None)), f'{name} -> {target}'
