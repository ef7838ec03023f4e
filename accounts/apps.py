from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts and teams"

    def ready(self) -> None:
        from studio.celery import register_periodic_task

        register_periodic_task(
            "purge-expired-invitations", "accounts.tasks.purge_expired_invitations", every_seconds=6 * 3600
        )
