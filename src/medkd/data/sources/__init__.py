"""Dataset sources: where the raw data of ``config/datasets.yaml`` comes from and how it gets to ``data/<name>/``.

* :mod:`medkd.data.sources.spec` - ``config/datasets.yaml``, validated against
  ``workflow/schemas/datasets.schema.yaml`` (:func:`~medkd.data.sources.spec.load_datasets_yaml`);
* :mod:`medkd.data.sources.download` - resumable HTTP downloads (``Range``) with MD5/SHA-256 verification;
* :mod:`medkd.data.sources.archive` - safe extraction of tar and zip archives;
* :mod:`medkd.data.sources.fetch` - materialising one dataset: ``download`` datasets are downloaded,
  verified and unpacked, ``manual`` ones (behind a registration) are checked for the expected files; both get
  the marker ``.medkd-fetched.json``.

Every error these modules raise on purpose derives from :class:`SourceError` (or, for a malformed
``datasets.yaml``, from ``ValueError``), so the CLI can report it in one line.
"""


from medkd.errors import InputError


class SourceError(InputError):
    """Base class of the errors raised while fetching or verifying a dataset."""
