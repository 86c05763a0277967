"""TFDS builders of strokevision_jax. Importing a builder package registers it with TFDS."""
