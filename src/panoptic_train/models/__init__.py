"""The network: DINOv3 ViT backbones (`dinov3`), the EoMT network (`eomt`), model names and
their defaults (`registry`), and pretrained-weight loading in Meta, Hugging Face and timm
layouts (`weights`)."""
