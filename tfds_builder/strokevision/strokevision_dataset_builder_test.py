"""TFDS's own builder checks on `synthetic_small` (build, as_dataset, reload, metadata)."""

import tensorflow_datasets as tfds

from tfds_builder.strokevision import strokevision_dataset_builder


class StrokevisionSmallTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = strokevision_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["synthetic_small"]
    SKIP_CHECKSUMS = True
    # Split sizes of synthetic_small follow from its seed; tests/test_dataset.py checks them
    # against the simulator's own clip plan.
    SPLITS = {"train": None, "validation": None, "test": None}

    @classmethod
    def setUpClass(cls):
        from strokevision_jax.data import synthetic

        simulator = strokevision_dataset_builder.SYNTHETIC_SMALL.simulator
        patients = synthetic.split_patients(simulator)
        names = synthetic.patient_ids(simulator)
        counts = {split: 0 for split in patients}
        split_of = {p: s for s, ps in patients.items() for p in ps}
        for spec in synthetic.clip_specs(simulator):
            counts[split_of[names[spec.patient_index]]] += 1
        cls.SPLITS = counts
        super().setUpClass()


if __name__ == "__main__":
    tfds.testing.test_main()
