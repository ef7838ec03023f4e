"""The claim on a dataset version covers curation as well as validation: ``validation_claimed_at`` → ``claimed_at``."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("datasets_app", "0003_version_validation_claim")]

    operations = [
        migrations.RenameField(model_name="datasetversion", old_name="validation_claimed_at", new_name="claimed_at"),
    ]
