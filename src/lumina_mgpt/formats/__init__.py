"""The sequence language: vocabulary layouts, the Uni-Rep image codec and parser, resolution
buckets, image opening, prompts, and conversations -> ids + loss labels."""

from lumina_mgpt.formats.buckets import bucket_sizes, closest_bucket, resize_to_bucket
from lumina_mgpt.formats.conversation import (
    IGNORE_INDEX,
    IMAGE_PLACEHOLDER,
    EncodedConversation,
    encode_conversation,
    encode_generation_prompt,
)
from lumina_mgpt.formats.images import open_image
from lumina_mgpt.formats.layout import LAYOUT_NAMES, VocabLayout, get_layout
from lumina_mgpt.formats.prompts import (
    drop_size_phrase,
    image_map_pair_prompt,
    image_to_image_prompt,
    text_to_image_prompt,
)
from lumina_mgpt.formats.unirep import (
    ImageCursor,
    ImageSegment,
    Segment,
    TextSegment,
    UniRepError,
    check_image_size,
    encode_image,
    grid_shape,
    image_block_length,
    parse,
)

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_PLACEHOLDER",
    "LAYOUT_NAMES",
    "EncodedConversation",
    "ImageCursor",
    "ImageSegment",
    "Segment",
    "TextSegment",
    "UniRepError",
    "VocabLayout",
    "bucket_sizes",
    "check_image_size",
    "closest_bucket",
    "drop_size_phrase",
    "encode_conversation",
    "encode_generation_prompt",
    "encode_image",
    "get_layout",
    "grid_shape",
    "image_block_length",
    "image_map_pair_prompt",
    "image_to_image_prompt",
    "open_image",
    "parse",
    "resize_to_bucket",
    "text_to_image_prompt",
]
