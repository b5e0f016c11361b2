"""``python -m medkd.data.formats``: print the generated ``convert`` schema (YAML) for the config schema.

Paste it over ``$defs/dataset/properties/convert`` of ``workflow/schemas/config.schema.yaml`` (indented to
that level) after adding or changing a format; ``tests/unit/test_formats.py`` checks the two are equal.
"""

import yaml

from medkd.data.formats import convert_schema


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data):  # shared fragments are written out in full, not as YAML anchors
        return True


print(yaml.dump({"convert": convert_schema()}, Dumper=_Dumper, sort_keys=False, width=110,
                default_flow_style=None), end="")
