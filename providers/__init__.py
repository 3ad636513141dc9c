"""providers: cloud-provider plugins (AWS, GCP) written against cws_actors' public API.

The providers land with issue 6; until then this package holds no public names.
"""

__all__: list[str] = []
