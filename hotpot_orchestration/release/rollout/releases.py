"""The names releases are known by: jobs, assets and run tags. Other concerns depend on them (the image's
new_image_tag_sensor launches canary_release_job and reads production_release; pipeline health and the run
failure alert read the release runs and their outcome tag; release_failure_sensor watches the release jobs),
so they live here, apart from the assets and jobs, and each is written once.
"""

from hotpot_orchestration.platform.kubernetes import RELEASE_POD_TAGS

GROUP = "release"
IMAGE_ASSET = "api_image"  # built by release/image; every release starts downstream of it
PRODUCTION_ASSET = "production_release"
APPROVAL_ASSET = "release_approval"
BLUE_GREEN_DEPLOY = "blue_green_deploy_idle"
BLUE_GREEN_SWITCH = "blue_green_switch"
BLUE_GREEN_SCALE_DOWN = "blue_green_scale_down_old"

CANARY_JOB, BLUE_GREEN_JOB, ROLLBACK_JOB = "canary_release_job", "blue_green_release_job", "rollback_job"
RELEASE_JOBS = (CANARY_JOB, BLUE_GREEN_JOB)

# The run queue (dagster.yaml) allows one run at a time with the key `hotpot/release`: two releases never
# move traffic at once, and a second one waits in the queue. Automatic retries are off: a half-done traffic
# shift is undone by release_failure_sensor, never replayed.
RELEASE_QUEUE_TAG = "hotpot/release"
RELEASE_TAGS = {RELEASE_QUEUE_TAG: "release", "dagster/max_retries": "0", **RELEASE_POD_TAGS}
# rollback_job must NOT carry `hotpot/release`: the limit counts every value of that key, so a rollback
# would queue behind the very release it has to stop. It gets a key of its own instead.
ROLLBACK_TAGS = {"hotpot/rollback": "manual", **RELEASE_POD_TAGS}
# Set on a release run that ended on purpose without releasing (its run status is SUCCESS: nothing broke).
OUTCOME_TAG, ROLLED_BACK = "hotpot/release-outcome", "rolled back"
