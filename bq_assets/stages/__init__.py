"""The hops of an export, one module each, holding the hop's asset body and its checks:
``query`` → ``gcs`` objects → ``bigquery`` → ``databricks`` (and ``delivery``, the ``gcs`` hop
of a delivered export). ``freshness`` adds the latest-partition check, ``partitions`` the
partitions definition and the window a run covers.

What every hop shares lives beside them: ``handoff`` (a step reads its input by the URI its
upstream's materialization recorded, through one typed set) and ``results`` (checks declared for
the factory, check results). The asset attributes come from ``bq_assets.translator``, errors
become failures in ``bq_assets.failures``, and the work is done by ``bq_assets.engine`` and the
resources.
"""
