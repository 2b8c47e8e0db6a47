from django.urls import path

from . import metrics, views

app_name = "dashboard"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("versions/<int:pk>/", views.version_detail, name="version"),
    path("versions/<int:pk>/lifecycle/", views.version_lifecycle, name="version_lifecycle"),
    path("versions/<int:pk>/migrate/", views.version_migrate, name="version_migrate"),
    path("versions/<int:pk>/migrate/mapping/", views.migrate_mapping, name="migrate_mapping"),
    path("versions/<int:pk>/migrate/count/", views.migrate_count, name="migrate_count"),
    path("batches/<int:pk>/", views.batch_detail, name="batch"),
    path("batches/<int:pk>/action/", views.batch_action, name="batch_action"),
    path("instances/<int:pk>/", views.instance_detail, name="instance"),
    path("instances/<int:pk>/action/", views.instance_action, name="instance_action"),
    path("versions/<int:pk>/rollout/", views.rollout_start, name="rollout_start"),
    path("rollouts/", views.rollout_list, name="rollouts"),
    path("rollouts/<int:pk>/", views.rollout_detail, name="rollout"),
    path("rollouts/<int:pk>/action/", views.rollout_action, name="rollout_action"),
    path("audit/", views.audit_log, name="audit"),
    path("cleanup/", views.cleanup_preview, name="cleanup"),
    path("metrics", metrics.metrics_view, name="metrics"),
]
