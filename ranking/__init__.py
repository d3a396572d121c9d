"""nextwatch ranking package."""

import towers as _towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
