"""Names shared by the label config, the task payloads and the webhook parser (one place, so they agree)."""

from __future__ import annotations

FROM_NAME = "defect"
"""The ``<Choices name=...>`` of the label config: the control whose choice is the image's class."""

IMAGE_NAME = "image"
"""The ``<Image name=...>`` the choice applies to; also the task data key holding the photo's URL."""

HEATMAP_NAME = "heatmap"
"""The second ``<Image>``: the Grad-CAM overlay; also the task data key holding its URL."""

GUESS_NAME = "guess"
"""The ``<Text>`` under the images and the task data key holding the model's guess in words."""

MODEL_NAME_KEY = "model"
"""Task data key holding the registry names of the models behind the guess and the heat-map."""

IMAGE_ID_KEY = "defectloop_image_id"
"""Task data key holding our image id, so a webhook or an API listing maps back to our row."""

SECRET_HEADER = "X-Defectloop-Secret"  # noqa: S105  # a header name, not a secret
"""The header Label Studio sends with every webhook, holding the shared secret."""

WEBHOOK_PATH = "/webhooks/label-studio"
"""Where the receiver (``defectloop serve``) takes Label Studio's webhooks."""

WEBHOOK_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")
"""The webhook actions registered with Label Studio (deletion is plural in Label Studio's API)."""

SIMULATED_ANNOTATOR = "simulated-annotator@defectloop.invalid"
"""The Label Studio user the demo's simulated annotator answers as (answers from ground truth).

Annotations completed by this user are recorded with origin ``simulated``; everyone else's with origin
``label_studio``. The ``.invalid`` domain is reserved (RFC 2606): no real annotator can have it.
"""
